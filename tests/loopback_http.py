"""A plain HTTP server on loopback for the tests: a site build, a fake package index."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def http_served(handler: Callable[..., http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve `handler` (a request handler class, or a `functools.partial` of one) on a port the
    system picks on 127.0.0.1, in a thread; yield its base URL, then stop it and wait."""
    server: http.server.ThreadingHTTPServer = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), handler
    )
    thread = threading.Thread(target=server.serve_forever, name="loopback-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


__all__ = ["http_served"]
