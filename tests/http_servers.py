"""An HTTP server on a free local port, serving in a thread, for the tests that read videos and images from URLs."""

import contextlib
import http.server
import threading


@contextlib.contextmanager
def http_server(handler, host: str = "127.0.0.1", **attributes):
    """A `ThreadingHTTPServer` of `handler` on a free port of `host`; `server.url` is its address, and `attributes` are
    set on the server (a handler reads them as `self.server.<name>`). Shut down and joined on exit."""
    server = http.server.ThreadingHTTPServer((host, 0), handler)
    server.daemon_threads, server.url = True, f"http://{host}:{server.server_address[1]}"
    for name, value in attributes.items():
        setattr(server, name, value)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
