"""The server side of RFC 6455 WebSockets, stdlib only: as much as the kubernetes client's streams need.

The kubernetes client (through `websocket-client`) upgrades an ordinary HTTP/1.1 GET, then exchanges
binary messages. This module does the upgrade (`accept`) and the framing (`WebSocket`); the Kubernetes
channel protocols on top of it (exec, port-forward) are in `streams.py`.

Deliberately left out: extensions (permessage-deflate is never offered by the client), TLS, sending
fragmented messages (we send each message as one frame; clients must accept that).
"""

from __future__ import annotations

import base64
import hashlib
import socket
import struct
import threading

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3: fixed, appended to the client's key
CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_MESSAGE = 64 * 1024 * 1024  # bounded memory: a larger message from a client is refused (close 1009)
NORMAL, PROTOCOL_ERROR, TOO_BIG = 1000, 1002, 1009


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept: proves to the client that this server understood the upgrade (not a cache)."""
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def upgrade_problem(headers) -> str | None:
    """Why these request headers are not a WebSocket upgrade we can accept, or None."""
    if headers.get("Upgrade", "").lower() != "websocket":
        return "Upgrade request required"
    if "upgrade" not in headers.get("Connection", "").lower():
        return "Connection: Upgrade required"
    if headers.get("Sec-WebSocket-Version", "") != "13":
        return "only WebSocket version 13 is supported"
    if not headers.get("Sec-WebSocket-Key"):
        return "Sec-WebSocket-Key required"
    return None


def choose_protocol(headers, supported: tuple[str, ...]) -> str | None:
    """The first subprotocol the client offers that we speak (client order, as the API server's wsstream does)."""
    offered = [p.strip() for p in headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    return next((p for p in offered if p in supported), None)


def accept(handler, protocol: str) -> WebSocket:
    """Answer 101 on a BaseHTTPRequestHandler; from then on its connection speaks WebSocket frames."""
    handler.send_response(101, "Switching Protocols")
    handler.send_header("Upgrade", "websocket")
    handler.send_header("Connection", "Upgrade")
    handler.send_header("Sec-WebSocket-Accept", accept_key(handler.headers["Sec-WebSocket-Key"]))
    handler.send_header("Sec-WebSocket-Protocol", protocol)
    handler.end_headers()
    handler.close_connection = True  # no HTTP request can follow on this connection
    # Read through the handler's buffered rfile: the client may have sent its first frame right behind the
    # request, and those bytes may already sit in that buffer.
    return WebSocket(handler.connection, handler.rfile)


class WebSocket:
    """One accepted connection. `send` may be called from several threads; `recv` from one."""

    def __init__(self, sock: socket.socket, rfile):
        self.sock, self.rfile = sock, rfile
        self._send_lock = threading.Lock()
        self.close_sent = False  # after our close frame, no more data may go out (RFC 6455 5.5.1)
        self.peer_closed = False  # the client's close frame arrived (or the connection ended)

    # ---- sending ---------------------------------------------------------------------------------

    def send(self, payload: bytes, opcode: int = BINARY) -> None:
        """One unfragmented, unmasked frame (servers never mask). Raises ConnectionError once closing."""
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x80 | opcode, n)
        elif n < 1 << 16:
            header = struct.pack("!BBH", 0x80 | opcode, 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 127, n)
        with self._send_lock:
            if self.close_sent:
                raise ConnectionError("websocket is closing")
            self.close_sent = opcode == CLOSE
            self.sock.sendall(header + payload)

    def send_close(self, code: int = NORMAL, reason: str = "") -> None:
        """Start the closing handshake (idempotent, never raises: the peer may be gone already)."""
        try:
            self.send(struct.pack("!H", code) + reason.encode()[:120], CLOSE)
        except OSError:  # ConnectionError (closing already) is an OSError too
            pass

    # ---- receiving -------------------------------------------------------------------------------

    def recv(self) -> bytes | None:
        """The next data message (text or binary, as bytes), or None once the client closed.

        Answers pings with pongs and a close with a close, as RFC 6455 requires, and reassembles fragments.
        A protocol violation closes the connection (1002/1009) and returns None.
        """
        parts: list[bytes] = []
        try:
            while True:
                fin, opcode, payload = self._frame()
                if opcode == PING:
                    if not self.close_sent:  # once closing, a ping needs no answer
                        self.send(payload, PONG)
                elif opcode == PONG:
                    pass  # we never ping; an unsolicited pong is allowed and ignored
                elif opcode == CLOSE:
                    self.peer_closed = True
                    self.send_close(NORMAL)  # the answering close frame (a no-op if ours went first)
                    return None
                elif opcode in (TEXT, BINARY, CONT) and (opcode == CONT) == bool(parts):
                    parts.append(payload)
                    if sum(map(len, parts)) > MAX_MESSAGE:
                        return self._fail(TOO_BIG, "message too big")
                    if fin:
                        return b"".join(parts)
                else:
                    return self._fail(PROTOCOL_ERROR, f"unexpected opcode {opcode}")
        except _Violation as exc:
            return self._fail(exc.code, str(exc))
        except (OSError, EOFError):  # the connection went away (or was aborted by stop())
            self.peer_closed = True
            return None

    def _frame(self) -> tuple[bool, int, bytes]:
        b0, b1 = self._read(2)
        fin, opcode, masked, n = bool(b0 & 0x80), b0 & 0x0F, b1 & 0x80, b1 & 0x7F
        if b0 & 0x70:
            raise _Violation(PROTOCOL_ERROR, "reserved bits set (no extension was negotiated)")
        if not masked:
            raise _Violation(PROTOCOL_ERROR, "client frames must be masked")  # RFC 6455 5.1
        if opcode >= CLOSE and (n > 125 or not fin):
            raise _Violation(PROTOCOL_ERROR, "control frames are short and unfragmented")
        if n == 126:
            n = struct.unpack("!H", self._read(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._read(8))[0]
        if n > MAX_MESSAGE:
            raise _Violation(TOO_BIG, "frame too big")
        mask = self._read(4)
        return fin, opcode, _unmask(self._read(n), mask)

    def _read(self, n: int) -> bytes:
        data = self.rfile.read(n) if n else b""
        if len(data) < n:
            raise EOFError("connection closed mid-frame")
        return data

    def _fail(self, code: int, reason: str) -> None:
        self.send_close(code, reason)
        self.peer_closed = True  # we will not read from this client any more
        return None

    # ---- ending ----------------------------------------------------------------------------------

    def close_soon(self, timeout: float = 5.0) -> None:
        """Send our close frame from a thread that is not the reader; the reader sees the client's answer and ends.
        A client that never answers is dropped after `timeout` seconds, so the reader cannot wait forever."""
        self.send_close(NORMAL)
        timer = threading.Timer(timeout, self.abort)
        timer.daemon = True
        timer.start()

    def close(self, timeout: float = 5.0) -> None:
        """Finish the closing handshake (send ours, wait for theirs, bounded), then drop the connection."""
        self.send_close(NORMAL)
        if not self.peer_closed:
            try:
                self.sock.settimeout(timeout)
                while self.recv() is not None:
                    pass  # data after our close frame is discarded (RFC 6455 1.4)
            except OSError:
                pass
        self.abort()

    def abort(self) -> None:
        """Drop the connection at once (also unblocks a thread waiting in recv)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _Violation(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def _unmask(data: bytes, mask: bytes) -> bytes:
    """XOR with the 4-byte mask, as one big integer: a 1 MB payload in milliseconds, not seconds."""
    if not data:
        return data
    n = len(data)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
