"""Memory and idle CPU: N idle WebSocket connections, flask-cnerium against the peers.

Each round starts each server fresh (gunicorn gthread, 1 worker, one thread per connection
plus spare; the same servers as benchmarks/fanout_bench.py), warms it with one HTTP request
and one WebSocket connection, reads the worker's RSS, connects --clients clients (default
500) in the room, waits a second and reads it again: (after - before) / N per connection.
Systems in turn, A B C A B C; medians of --rounds rounds. With the connections still open,
flask-cnerium's server CPU is read over --duration / --rounds seconds in each round, so over
--duration seconds (default 10) in all: it should not poll.
The naive flask-sock loop is there for reference (it is what flask-sock itself costs).
"""

from __future__ import annotations

import tempfile
import time

from common import cpu_seconds, median, parse_args, table
from wsbench import LABELS, SYSTEMS, Clients, http, rss_bytes, start_server

SETTLE = 1.0
"""Seconds between the last connection and the second RSS reading."""


def one(clients: Clients, system: str, n: int, log_dir: str, idle: float) -> dict:
    """A fresh server of ``system``: RSS per connection, and its idle CPU if ``idle``."""
    server = start_server(system, n + 32, log_dir)
    try:
        http(server.port, "GET", "/bench/status")
        clients.connect(server, 1)
        clients.close(system)
        time.sleep(SETTLE)
        before = rss_bytes(server.pid)
        clients.connect(server, n)
        time.sleep(SETTLE)
        after = rss_bytes(server.pid)
        result = {"before": before, "after": after, "per_conn": (after - before) / n}
        if idle:
            cpu, started = cpu_seconds(server.pid), time.monotonic()
            time.sleep(idle)
            result["idle_cpu"] = cpu_seconds(server.pid) - cpu
            result["idle_seconds"] = time.monotonic() - started
        clients.close(system)
        return result
    finally:
        server.stop()


def main() -> None:
    args = parse_args(__doc__, rounds=3, clients=[500], duration=10.0)
    n = args.clients[0]
    runs: dict[str, list[dict]] = {system: [] for system in SYSTEMS}
    with tempfile.TemporaryDirectory() as log_dir, Clients() as clients:
        for _ in range(args.rounds):
            for system in SYSTEMS:
                idle = args.duration / args.rounds if system == "cnerium" else 0.0
                runs[system].append(one(clients, system, n, log_dir, idle))
    print(f"Memory: server RSS with {n} idle WebSocket connections (gunicorn gthread, "
          f"medians of {args.rounds} interleaved rounds, a fresh server each)")
    rows = [(LABELS[system], median([r["before"] for r in rs]) / 2**20,
             median([r["after"] for r in rs]) / 2**20,
             median([r["per_conn"] for r in rs]) / 1024) for system, rs in runs.items()]
    print(table(["system", "RSS before MiB", f"RSS with {n} MiB", "KiB per connection"], rows))
    ours = median([r["per_conn"] for r in runs["cnerium"]])
    theirs = median([r["per_conn"] for r in runs["socketio"]])
    idle = (sum(r["idle_cpu"] for r in runs["cnerium"])
            / sum(r["idle_seconds"] for r in runs["cnerium"]))
    cpu = sum(r["idle_cpu"] for r in runs["cnerium"])
    print(f"\nflask-cnerium idle CPU with {n} connections: {idle:.4f} cores ({cpu:.2f} CPU s "
          f"in {args.duration:g} s over {args.rounds} windows; /proc counts 10 ms ticks)")
    print(table(["target", "measured", "met"], [
        ("memory per idle connection <= Flask-SocketIO's", ours / theirs,
         "yes" if ours <= theirs else "NO"),
        (f"{n} idle connections < 0.02 server cores", idle, "yes" if idle < 0.02 else "NO"),
    ]))


if __name__ == "__main__":
    main()
