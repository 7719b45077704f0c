"""WebSocket clients for the realtime benchmarks: many sockets, one selector thread.

Run as a process (``python benchmarks/swarm.py``) that takes one JSON command per line on
stdin and answers each with one JSON line on stdout, so that the clients' parsing never
competes with the server under test for one GIL. Raw sockets speak just enough of each
wire: RFC 6455 frames (client frames masked with a zero key), and for Flask-SocketIO the
Engine.IO 4 / Socket.IO 5 packets ("0" open, "40" connect, "2"/"3" ping/pong, "42" event).

Commands: ``connect`` (system, port, n), ``measure`` (system, phase, events, timeout, idle),
``settle`` (quiet, timeout), ``close`` (system), ``quit``. The clients of every connected
system are read all the time; outside a measurement of their system, what arrives is dropped.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import json
import os
import re
import selectors
import socket
import sys
import time

PATHS = {
    "cnerium": "/ws?room=bench",
    "naive": "/ws?room=bench",
    "socketio": "/socket.io/?EIO=4&transport=websocket",
}
_EVENT = re.compile(rb'"p":\s*(\d+),\s*"t":\s*([0-9.eE+-]+)')
RECV = 1 << 18
STOPPED = 1.0
"""At the time cap, a phase with no event for this many seconds froze; otherwise it is cut."""


def masked(text: bytes, opcode: int = 0x1) -> bytes:
    """A client frame (final, masked with the all-zero key, so the payload is as is)."""
    size = len(text)
    if size < 126:
        head = bytes((0x80 | opcode, 0x80 | size))
    else:
        head = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
    return head + b"\0\0\0\0" + text


def handshake(port: int, path: str, rcvbuf: int | None = None) -> socket.socket:
    """A socket connected to 127.0.0.1:port that has sent a WebSocket upgrade for ``path``."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                 f"Sec-WebSocket-Key: {key}\r\n\r\n".encode())
    return sock


def read_upgrade(sock: socket.socket) -> bytes:
    """Read the 101 response; what follows it (frames already received) is returned."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("the server closed the connection during the handshake")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head.decode(errors="replace"))
    return rest


def frames(buffer: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Whole server frames at the front of ``buffer`` and what is left of it."""
    out, at, size = [], 0, len(buffer)
    while at + 2 <= size:
        length, start = buffer[at + 1] & 0x7F, at + 2
        if length == 126:
            length, start = int.from_bytes(buffer[start:start + 2], "big"), start + 2
        elif length == 127:
            length, start = int.from_bytes(buffer[start:start + 8], "big"), start + 8
        end = start + length
        if end > size:
            break
        out.append((buffer[at] & 0x0F, buffer[start:end]))
        at = end
    return out, buffer[at:]


def join(sock: socket.socket, system: str, buffer: bytes = b"") -> None:
    """Wait for the frame that says this client is in the room (Socket.IO: send "40" first)."""
    expected = {"cnerium": b'{"type":"cnerium.subscribed"', "naive": b'{"type": "joined"',
                "socketio": b"40{"}[system]
    while True:
        got, buffer = frames(buffer)
        for opcode, payload in got:
            if opcode == 0x1 and payload.startswith(b"0{") and system == "socketio":
                sock.sendall(masked(b"40"))
            elif opcode == 0x1 and payload.startswith(expected):
                return
        chunk = sock.recv(RECV)
        if not chunk:
            raise ConnectionError("the server closed the connection before the join")
        buffer += chunk


class Group:
    """The clients of one system."""

    def __init__(self) -> None:
        self.socks: list[socket.socket] = []
        self.buffers: list[bytes] = []
        self.counts: list[int] = []
        self.closed = 0


class Swarm:
    """Client sockets of each system, all read by one selector."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.selector.register(sys.stdin, selectors.EVENT_READ, None)
        self.groups: dict[str, Group] = {}
        self.last_data = time.monotonic()
        self._measuring: dict | None = None
        self._settling: dict | None = None

    # -- commands --------------------------------------------------------------------

    def connect(self, system: str, port: int, n: int) -> dict:
        """Open ``n`` clients of ``system`` and wait until the server put each in the room."""
        group = self.groups.setdefault(system, Group())
        socks = [handshake(port, PATHS[system]) for _ in range(n)]
        for sock in socks:
            sock.settimeout(30)
            join(sock, system, read_upgrade(sock))
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ, (group, len(group.socks)))
            group.socks.append(sock)
            group.buffers.append(b"")
            group.counts.append(0)
        return {"connected": len(group.socks)}

    def close(self, system: str) -> dict:
        """Close every client of ``system``."""
        for sock in self.groups.pop(system, Group()).socks:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(sock)
            sock.close()
        return {"closed": True}

    def measure(self, system: str, phase: int, events: int, timeout: float,
                idle: float) -> dict:
        """Count ``phase``'s events at ``system``'s clients until each has ``events``.

        Answered at once, and again with the result: ``done``, or ended early after ``idle``
        seconds without an event (``froze``) or at ``timeout`` (``cut``).
        """
        group = self.groups[system]
        group.counts = [0] * len(group.socks)
        now = time.monotonic()
        self._measuring = {"group": group, "phase": phase, "events": events,
                           "deadline": now + timeout, "idle": idle, "last_progress": now,
                           "cache": {}, "latencies": [], "first_t": None, "last_recv": None,
                           "cpu": _cpu(), "total": 0}
        return {"measuring": True}

    def settle(self, quiet: float, timeout: float) -> None:
        """Answer once nothing has arrived for ``quiet`` seconds (or after ``timeout``)."""
        self._settling = {"quiet": quiet, "deadline": time.monotonic() + timeout}

    # -- the loop --------------------------------------------------------------------

    def run(self) -> None:
        """Serve commands until ``quit``, reading every client in between."""
        while True:
            timeout = 0.05 if self._measuring or self._settling else None
            for key, _ in self.selector.select(timeout):
                if key.data is None:
                    line = sys.stdin.readline()
                    if not line or not self._command(json.loads(line)):
                        return
                else:
                    self._read(*key.data, key.fileobj)
            if self._measuring and (reason := self._finished()):
                self._reply(self._result(reason))
                self._measuring = None
            if self._settling and self._settled():
                self._reply({"settled": True})
                self._settling = None

    def _command(self, command: dict) -> bool:
        name = command.pop("cmd")
        if name == "quit":
            return False
        reply = getattr(self, name)(**command)
        if reply is not None:
            self._reply(reply)
        return True

    def _reply(self, data: dict) -> None:
        sys.stdout.write(json.dumps(data) + "\n")
        sys.stdout.flush()

    def _read(self, group: Group, index: int, sock: socket.socket) -> None:
        try:
            chunk = sock.recv(RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.selector.unregister(sock)
            group.closed += 1
            return
        now = time.time()
        self.last_data = time.monotonic()
        got, group.buffers[index] = frames(group.buffers[index] + chunk)
        m = self._measuring
        if m is not None and m["group"] is not group:
            m = None
        for opcode, payload in got:
            if opcode != 0x1:
                if opcode == 0x9:
                    sock.send(masked(payload, 0xA))
                continue
            if payload == b"2":  # Engine.IO ping
                sock.send(masked(b"3"))
                continue
            if m is None:
                continue
            info = m["cache"].get(payload)
            if info is None:
                info = m["cache"][payload] = _event(payload)
            if info[0] == m["phase"]:
                group.counts[index] += 1
                m["total"] += 1
                m["latencies"].append(now - info[1])
                if m["first_t"] is None or info[1] < m["first_t"]:
                    m["first_t"] = info[1]
                m["last_recv"] = now
                m["last_progress"] = self.last_data

    def _finished(self) -> str | None:
        m = self._measuring
        if min(m["group"].counts, default=0) >= m["events"]:
            return "done"
        now = time.monotonic()
        stopped = now - m["last_progress"]
        if stopped >= m["idle"]:
            return "froze"
        if now >= m["deadline"]:
            return "froze" if stopped >= STOPPED else "cut"
        return None

    def _settled(self) -> bool:
        now = time.monotonic()
        s = self._settling
        return now - self.last_data >= s["quiet"] or now >= s["deadline"]

    def _result(self, reason: str) -> dict:
        m = self._measuring
        group = m["group"]
        histogram = collections.Counter(round(x * 1e4) for x in m["latencies"])  # 0.1 ms
        return {"reason": reason, "total": m["total"],
                "complete": sum(c >= m["events"] for c in group.counts),
                "clients": len(group.socks), "closed": group.closed, "first_t": m["first_t"],
                "last_recv": m["last_recv"], "cpu": _cpu() - m["cpu"],
                "histogram": list(histogram.items())}


def _event(payload: bytes) -> tuple[int, float]:
    found = _EVENT.search(payload)
    return (int(found.group(1)), float(found.group(2))) if found else (-1, 0.0)


def _cpu() -> float:
    times = os.times()
    return times.user + times.system


if __name__ == "__main__":
    Swarm().run()
