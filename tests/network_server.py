"""A local HTTP server that serves network files well and badly, for download tests (no internet).

A test module imports the fixtures `server` (the base URL) and `cache` (autouse there: a fresh
$STYLEDECK_CACHE per test, and the slow routes held until the test ends).
"""
from __future__ import annotations

import http.server
import pickle
import socket
import threading
from contextlib import contextmanager
from typing import Iterator

import pytest

# a real pickle (PROTO opcode first) a few chunks long
PAYLOAD = pickle.dumps({"weights": bytes(range(256)) * 1200}, protocol=4)


class NetworkHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    release = threading.Event()          # the slow and silent routes wait for this
    hits: list[str] = []

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _head(self, length: int | None, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        if length is not None:
            self.send_header("Content-Length", str(length))
        else:
            self.send_header("Connection", "close")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.hits.append(self.path)
        try:
            if self.path == "/net.pkl":
                self._head(len(PAYLOAD))
                self.wfile.write(PAYLOAD)
            elif self.path == "/nolength.pkl":      # size unknown: body ends when the connection closes
                self.close_connection = True
                self._head(None)
                self.wfile.write(PAYLOAD)
            elif self.path == "/truncated.pkl":     # promises the whole file, sends half, hangs up
                self.close_connection = True
                self._head(len(PAYLOAD))
                self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
            elif self.path == "/slow.pkl":          # a first part, then nothing until released
                self._head(len(PAYLOAD))
                self.wfile.write(PAYLOAD[:16384])
                self.wfile.flush()
                self.release.wait(10)
                self.wfile.write(PAYLOAD[16384:])
            elif self.path == "/silent.pkl":        # accepts, never answers
                self.release.wait(10)
            elif self.path == "/page.pkl":          # a captive portal's idea of a network
                body = b"<html><body>Please log in</body></html>"
                self._head(len(body))
                self.wfile.write(body)
            else:
                self.send_error(404, "Not Found")
        except (BrokenPipeError, ConnectionResetError):
            pass                                    # the client gave up (cancel, timeout): fine


@contextmanager
def serve() -> Iterator[str]:
    """Run the server on a free localhost port; yields its base URL."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NetworkHandler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        NetworkHandler.release.set()
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serve() as url:
        yield url


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("STYLEDECK_CACHE", str(folder))
    NetworkHandler.release.clear()
    yield folder
    NetworkHandler.release.set()
