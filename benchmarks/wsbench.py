"""What the realtime benchmarks share: the three servers, the client processes, /proc.

Every server is gunicorn's gthread worker (1 worker, one thread per connection plus spare),
started with benchmarks/apps/gunicorn_ws.py, serving one app of benchmarks/apps/fanout_app.py.
Flask-SocketIO's docs recommend exactly this for its threading mode; flask-sock needs it.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Sequence

from common import BIN, ROOT, Server, free_port
from swarm import handshake, join, read_upgrade

APPS = os.path.join(ROOT, "benchmarks", "apps")
SYSTEMS = ("cnerium", "naive", "socketio")
LABELS = {"cnerium": "flask-cnerium", "naive": "naive flask-sock loop",
          "socketio": "Flask-SocketIO threading"}
WORKERS = int(os.environ.get("BENCH_CLIENT_PROCS", "2"))
"""Client processes; each reads its share of the clients with one selector thread."""


def start_server(system: str, threads: int, log_dir: str) -> Server:
    """gunicorn gthread (1 worker, ``threads`` threads) serving ``system``'s app."""
    port = free_port()
    argv = [os.path.join(BIN, "gunicorn"), "-k", "gthread", "-w", "1", "--threads",
            str(threads), "--worker-connections", str(threads * 2), "--graceful-timeout", "2",
            "-c", os.path.join(APPS, "gunicorn_ws.py"), "-b", f"127.0.0.1:{port}",
            "--chdir", APPS, "--error-logfile", os.path.join(log_dir, f"{system}.log"),
            f"fanout_app:{system}_app()"]
    server = Server(argv, port, env={"PYTHONPATH": ROOT, "BENCH_DIR": log_dir})
    server.system = system
    server.pid = http(port, "GET", "/bench/pid")["pid"]
    return server


def http(port: int, method: str, path: str) -> dict:
    """One request to a benchmark server; its JSON body."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def wait_idle(server: Server, timeout: float = 30.0) -> bool:
    """Wait until the server's emitting thread has finished; ``False`` if it has not."""
    deadline = time.monotonic() + timeout
    while http(server.port, "GET", "/bench/status")["busy"]:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid``."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def stalled_client(server: Server) -> socket.socket:
    """A client that joins the room and then never reads again (4 KiB receive buffer)."""
    path = "/ws?room=bench" if server.system != "socketio" else (
        "/socket.io/?EIO=4&transport=websocket")
    sock = handshake(server.port, path, rcvbuf=4096)
    sock.settimeout(30)
    join(sock, server.system, read_upgrade(sock))
    return sock


class Clients:
    """``WORKERS`` swarm processes driven together (benchmarks/swarm.py)."""

    def __init__(self) -> None:
        self._procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, "benchmarks",
                                                                      "swarm.py")],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, bufsize=1)
                       for _ in range(WORKERS)]

    def all(self, commands: Sequence[dict], timeout: float = 120.0) -> list[dict]:
        """Send each worker its command, then read one reply from each."""
        for proc, command in zip(self._procs, commands, strict=True):
            proc.stdin.write(json.dumps(command) + "\n")
            proc.stdin.flush()
        return self.replies(timeout)

    def replies(self, timeout: float) -> list[dict]:
        """One JSON line from each worker, within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        out = []
        for proc in self._procs:
            with selectors.DefaultSelector() as selector:
                selector.register(proc.stdout, selectors.EVENT_READ)
                if not selector.select(max(0.0, deadline - time.monotonic())):
                    raise TimeoutError("a client process did not answer in time")
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError("a client process died")
            out.append(json.loads(line))
        return out

    def connect(self, server: Server, n: int) -> None:
        """``n`` clients of ``server``'s system, split across the workers, all in the room."""
        shares = split(n, WORKERS)
        self.all([{"cmd": "connect", "system": server.system, "port": server.port, "n": k}
                  for k in shares])

    def close(self, system: str) -> None:
        """Close every client of ``system``."""
        self.all([{"cmd": "close", "system": system}] * WORKERS)

    def settle(self, quiet: float = 0.3, timeout: float = 30.0) -> None:
        """Wait until nothing has reached any client for ``quiet`` seconds."""
        self.all([{"cmd": "settle", "quiet": quiet, "timeout": timeout}] * WORKERS,
                 timeout + 10)

    def stop(self) -> None:
        """Stop the workers."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.stdin.write('{"cmd": "quit"}\n')
                proc.stdin.close()
        for proc in self._procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> Clients:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def split(n: int, parts: int) -> list[int]:
    """``n`` split into ``parts`` nearly equal shares."""
    return [n // parts + (i < n % parts) for i in range(parts)]


def percentile(histogram: Iterable[tuple[int, int]], q: float, unit: float = 0.1) -> float:
    """The ``q``-quantile of a merged histogram of (bucket, count), in ms (buckets ``unit`` ms)."""
    items = sorted(histogram)
    total = sum(count for _, count in items)
    if not total:
        return float("nan")
    rank, seen = q * total, 0
    for bucket, count in items:
        seen += count
        if seen >= rank:
            return bucket * unit
    return items[-1][0] * unit
