"""Exercise checkers: each runs the learner's code against the offline upstream, measures, and
returns a `CheckResult` that explains what it saw. A wrong answer never raises.

A checker's module is imported when its name is first used (PEP 562), so a lesson loads only its
own checker and what that needs: in a browser tab (Pyodide) lesson 02's check loads without the
shared-limit checker's Redis client, which has no place there.
"""

import lazy_loader

# The names and their modules are listed once, in __init__.pyi.
__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
