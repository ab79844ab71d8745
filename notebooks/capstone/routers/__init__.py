"""The endpoints, one router per concern, included by `capstone.main`."""
