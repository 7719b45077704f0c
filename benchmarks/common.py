"""What every benchmark script shares: its command line, servers on loopback, tables."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
TICK = os.sysconf("SC_CLK_TCK")


def parse_args(description: str, add_flags: Callable[[argparse.ArgumentParser], None] | None = None,
               **defaults: object) -> argparse.Namespace:
    """The flags every script takes (a script documents which ones it uses in its help), and
    any of its own that ``add_flags`` adds."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rounds", type=int, default=defaults.get("rounds", 3),
                        help="interleaved rounds; medians are reported (default %(default)s)")
    parser.add_argument("--clients", type=int, nargs="+", default=defaults.get("clients", [16]),
                        help="concurrent clients (default %(default)s)")
    parser.add_argument("--events", type=int, default=defaults.get("events", 1000),
                        help="events per burst, where the script emits events")
    parser.add_argument("--duration", type=float, default=defaults.get("duration", 5.0),
                        help="seconds per measured run (default %(default)s)")
    if add_flags is not None:
        add_flags(parser)
    return parser.parse_args()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def on_cpu(cpu: int) -> Callable[[], None]:
    """A ``preexec_fn`` that pins the child process to ``cpu``."""
    return lambda: os.sched_setaffinity(0, {cpu})


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    """Block until something listens on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class Server:
    """A server process in its own process group, stopped on exit."""

    def __init__(self, argv: Sequence[str], port: int, env: dict | None = None,
                 cpu: int | None = None) -> None:
        self.port = port
        self.process = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **(env or {})},
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        start_new_session=True,
                                        preexec_fn=None if cpu is None else on_cpu(cpu))
        try:
            wait_for_port(port)
        except RuntimeError:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the whole process group."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def median(values: Sequence[float]) -> float:
    """The median, or NaN for no values."""
    return statistics.median(values) if values else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table with right-aligned columns."""
    cells = [[str(h) for h in headers]] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)
