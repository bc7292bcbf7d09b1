"""HTTP/1.1 over a plain socket, for tests that must control every byte a client sends."""

from __future__ import annotations

import contextlib
import socket

__all__ = ["host_port", "read_response"]


def host_port(url: str) -> tuple[str, int]:
    """``http://127.0.0.1:8000`` -> ``("127.0.0.1", 8000)``."""
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def read_response(s: socket.socket, timeout: float = 15) -> bytes:
    """One HTTP/1.1 response with a Content-Length body (what the receiver always sends), however the bytes
    were split into segments; what arrived if the connection closes or resets first."""
    s.settimeout(timeout)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while b"\r\n\r\n" not in data:
            part = s.recv(65536)
            if not part:
                return data
            data += part
        head, _, rest = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(rest) < length:
            part = s.recv(65536)
            if not part:
                break
            rest += part
        return head + b"\r\n\r\n" + rest
    return data
