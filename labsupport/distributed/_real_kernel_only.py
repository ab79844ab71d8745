"""Imported first by `labsupport.distributed`: in a browser tab (Pyodide), importing the package
ends here, with `labsupport.browser.RealKernelRequired` in one line, before any of its modules
(and Redis' client, which the browser edition does not install) is imported."""

from ..browser import require_real_kernel

require_real_kernel("labsupport.distributed", "worker processes, TCP sockets and a Redis server")
