"""HTTP: a plain Flask route against the same work behind durable_post, interleaved.

gunicorn gthread (1 worker x 8 threads) serves benchmarks/apps/http_app.py; wrk on loopback
loads it. (a) plain GET JSON, (b) plain POST with one SQLite insert, (c) the same insert as
a durable_post with a fresh key per request (store shares the app's database), (d) the
replay of one stored response; for reference, (e) a plain POST with (d)'s body and
headers that touches no database, and (f) (c)'s insert behind a minimal hand-rolled
idempotency layer (benchmarks/apps/http_app.py says what it leaves out). With two or more
CPUs the server runs on the first and wrk (one thread) on the second, so that the load
generator does not take the server's CPU.
Uses --rounds, --clients (wrk connections), --duration.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import urllib.request

from common import BIN, ROOT, Server, free_port, median, on_cpu, parse_args, table

APPS = os.path.join(ROOT, "benchmarks", "apps")
SCENARIOS = {
    "a plain GET": ("/plain", None, {}),
    "b plain POST insert": ("/plain", "post.lua", {}),
    "c durable POST, fresh key": ("/durable", "fresh_key.lua", {}),
    "d durable replay": ("/durable", "post.lua", {"KEY": "bench-replay"}),
    "e plain POST, no database": ("/echo", "post.lua", {"KEY": "bench-replay"}),
    "f hand-rolled, fresh key": ("/hand-rolled", "fresh_key.lua", {"TARGET": "/hand-rolled"}),
}
CPUS = sorted(os.sched_getaffinity(0))
PINNED = len(CPUS) >= 2
"""Server on CPUS[0], wrk on CPUS[1]; on one CPU both share it (wrk with two threads)."""



def wrk(port: int, path: str, script: str | None, env: dict, clients: int,
        duration: float) -> tuple[float, float, float]:
    """Run wrk once: requests/s, p50 ms, p99 ms."""
    argv = ["wrk", "-t1" if PINNED else "-t2", f"-c{clients}", f"-d{duration:g}s",
            "--latency"]
    if script:
        argv += ["-s", os.path.join(APPS, script)]
    out = subprocess.run([*argv, f"http://127.0.0.1:{port}{path}"], capture_output=True,
                         text=True, env={**os.environ, **env}, check=True,
                         preexec_fn=on_cpu(CPUS[1]) if PINNED else None).stdout
    if "Non-2xx" in out:
        raise RuntimeError("wrk saw error responses:\n" + out)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return rps, _percentile(out, "50%"), _percentile(out, "99%")


def _percentile(out: str, label: str) -> float:
    value, unit = re.search(rf"{label}\s+([\d.]+)(us|ms|s)", out).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def prime_replay(port: int) -> None:
    """Store the response that (d) replays."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/durable", data=b'{"name": "bench"}', method="POST",
        headers={"Content-Type": "application/json", "Idempotency-Key": "bench-replay"})
    with urllib.request.urlopen(request) as response:
        assert response.status == 201, response.status


def main() -> None:
    args = parse_args(__doc__, rounds=5, duration=3.0, clients=[16])
    clients = args.clients[0]
    port = free_port()
    with tempfile.TemporaryDirectory() as data_dir, Server(
            [os.path.join(BIN, "gunicorn"), "-k", "gthread", "-w", "1", "--threads", "8",
             "-b", f"127.0.0.1:{port}", "--chdir", APPS, "http_app:app"],
            port, env={"BENCH_DIR": data_dir, "PYTHONPATH": ROOT},
            cpu=CPUS[0] if PINNED else None):
        prime_replay(port)
        results: dict[str, list[tuple[float, float, float]]] = {s: [] for s in SCENARIOS}
        for _ in range(args.rounds):
            for name, (path, script, env) in SCENARIOS.items():
                results[name].append(wrk(port, path, script, env, clients, args.duration))
    report(results, args)


def report(results: dict, args) -> None:
    medians = {name: tuple(median([r[i] for r in runs]) for i in range(3))
               for name, runs in results.items()}
    rows = [(name, rps, p50, p99) for name, (rps, p50, p99) in medians.items()]
    placement = (f"server on CPU {CPUS[0]}, wrk -t1 on CPU {CPUS[1]}" if PINNED
                 else "server and wrk -t2 share the CPU")
    print(f"HTTP: gunicorn gthread 1x8, wrk -c{args.clients[0]} -d{args.duration:g}s, "
          f"{placement}; medians of {args.rounds} interleaved rounds")
    print(table(["scenario", "req/s", "p50 ms", "p99 ms"], rows))
    a, b, c, d, e, f = medians.values()
    print()
    print(table(["ratio", "req/s", "p99", "target"], [
        ("(c) / (b)", c[0] / b[0], c[2] / b[2], "req/s >= 0.90, p99 <= 1.5"),
        ("(d) / (a)", d[0] / a[0], d[2] / a[2], "req/s >= 0.90, p99 <= 1.5"),
        ("(d) / (e)", d[0] / e[0], d[2] / e[2], "(reference: same request, no replay)"),
        ("(c) / (f)", c[0] / f[0], c[2] / f[2], "(reference: minimal hand-rolled layer)"),
    ]))


if __name__ == "__main__":
    main()
