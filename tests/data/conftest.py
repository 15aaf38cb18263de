"""Shared helpers for the dataset tests."""
import contextlib
import functools
import http.server
import threading

import pytest


@contextlib.contextmanager
def _serve(folder):
    """A quiet local HTTP server on 127.0.0.1 serving ``folder``; yields its base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def serve_folder():
    """``with serve_folder(folder) as base_url:`` serves ``folder`` over HTTP on 127.0.0.1 for the block."""
    return _serve
