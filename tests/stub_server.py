"""Small HTTP servers on loopback for the tests that need real sockets: a hostile or quirky FHIR server.

``stub_server(handler, host)`` serves ``handler(request) -> Reply`` on ``host`` (127.0.0.1, or 127.0.0.2 to play
"another host": all of 127.0.0.0/8 is loopback on Linux) in a thread, one request at a time when ``serial``
(a single-threaded server), and records every request it saw. ``drip_server`` answers with headers at once,
then one byte a second: the slow-loris of servers.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer
from typing import Any

import orjson


@dataclass
class Seen:
    method: str
    path: str  # with the query string
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # JSON-able (sent as application/fhir+json), or bytes as they are
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Stub:
    base: str  # http://host:port
    seen: list[Seen]


@contextmanager
def stub_server(handler: Callable[[Seen], Reply], host: str = "127.0.0.1", serial: bool = False) -> Iterator[Stub]:
    seen: list[Seen] = []

    class Handler(BaseHTTPRequestHandler):
        # A single-threaded server closes each connection after its answer, or one client would hold it.
        protocol_version = "HTTP/1.0" if serial else "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            request = Seen(self.command, self.path, dict(self.headers.items()), self.rfile.read(length))
            seen.append(request)
            reply = handler(request)
            body = (
                reply.body if isinstance(reply.body, bytes) else b"" if reply.body is None else orjson.dumps(reply.body)
            )
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting: as a real server sees it
                pass

        do_GET = do_POST = do_PUT = do_DELETE = _serve

    server = (HTTPServer if serial else ThreadingHTTPServer)((host, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Stub(f"http://{host}:{server.server_address[1]}", seen)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextmanager
def drip_server(
    body: bytes, host: str = "127.0.0.1", seconds_per_byte: float = 1.0, limit_s: float = 20
) -> Iterator[str]:
    """Answers every request with 200 and its headers at once, then ``body`` one byte per ``seconds_per_byte``
    (giving up after ``limit_s``, so that a client that never stops waiting still ends)."""
    listener = socket.create_server((host, 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                head = f"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: {len(body)}\r\n\r\n"
                conn.sendall(head.encode())
                started = time.monotonic()
                for byte in body:
                    if stop.is_set() or time.monotonic() - started > limit_s:
                        return
                    conn.sendall(bytes([byte]))
                    time.sleep(seconds_per_byte)
            except OSError:
                return

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()
        thread.join(timeout=10)
