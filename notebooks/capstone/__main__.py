"""`python -m capstone`: see `capstone.process`."""

import logging
import sys

from .process import main

logging.basicConfig(stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
main()
