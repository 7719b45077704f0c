"""HTTP: a plain Flask route against the same work behind durable_post, interleaved.

gunicorn gthread (1 worker x 8 threads) serves benchmarks/apps/http_app.py; wrk on loopback
loads it. (a) plain GET JSON, (b) plain POST with one SQLite insert, (c) the same insert as
a durable_post with a fresh key per request (store shares the app's database), (d) the
replay of one stored response; for reference, (e) a plain POST with (d)'s body and
headers that touches no database, and (f) (c)'s insert behind a minimal hand-rolled
idempotency layer (benchmarks/apps/http_app.py says what it leaves out). With two or more
CPUs the server runs on the first and wrk (one thread) on the second, so that the load
generator does not take the server's CPU; --unpinned lets them share every CPU, wrk with two
threads (how the measurements the targets were set from were made). Besides req/s and
latency, each scenario reports the worker's CPU time and thread switches per request, read
from /proc around each wrk run: with the server pinned and busy, req/s is the inverse of
that CPU time.
Uses --rounds, --clients (wrk connections), --duration; also --threads, --unpinned.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
import urllib.request

from common import BIN, ROOT, Server, cpu_seconds, free_port, median, on_cpu, parse_args, table

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
COLUMNS = ("req/s", "p50 ms", "p99 ms", "server µs/req", "switches/req")


def wrk(port: int, path: str, script: str | None, env: dict, clients: int,
        duration: float, pinned: bool, worker: int) -> tuple[float, ...]:
    """Run wrk once: req/s, p50 ms, p99 ms, and the worker's CPU µs and thread switches per
    request over the run."""
    argv = ["wrk", "-t1" if pinned else "-t2", f"-c{clients}", f"-d{duration:g}s", "--latency"]
    if script:
        argv += ["-s", os.path.join(APPS, script)]
    cpu, switches = cpu_seconds(worker), thread_switches(worker)
    out = subprocess.run([*argv, f"http://127.0.0.1:{port}{path}"], capture_output=True,
                         text=True, env={**os.environ, **env}, check=True,
                         preexec_fn=on_cpu(CPUS[1]) if pinned else None).stdout
    cpu, switches = cpu_seconds(worker) - cpu, thread_switches(worker) - switches
    if "Non-2xx" in out:
        raise RuntimeError("wrk saw error responses:\n" + out)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    return (rps, _percentile(out, "50%"), _percentile(out, "99%"), cpu / requests * 1e6,
            switches / requests)


def thread_switches(pid: int) -> int:
    """Context switches (voluntary and not) of all the threads of process ``pid`` so far."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                total += sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)
        except FileNotFoundError:  # the thread ended meanwhile
            pass
    return total


def worker_pid(master: int) -> int:
    """The pid of the (one) gunicorn worker of ``master``."""
    with open(f"/proc/{master}/task/{master}/children") as f:
        return int(f.read().split()[0])


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


def add_flags(parser: argparse.ArgumentParser) -> None:
    """This script's own flags."""
    parser.add_argument("--threads", type=int, default=8,
                        help="threads of the gunicorn worker (default %(default)s)")
    parser.add_argument("--unpinned", action="store_true",
                        help="let the server and wrk (two threads) share every CPU")


def main() -> None:
    args = parse_args(__doc__, add_flags, rounds=5, duration=3.0, clients=[16])
    pinned = len(CPUS) >= 2 and not args.unpinned
    port = free_port()
    with tempfile.TemporaryDirectory() as data_dir, Server(
            [os.path.join(BIN, "gunicorn"), "-k", "gthread", "-w", "1", "--threads",
             str(args.threads), "-b", f"127.0.0.1:{port}", "--chdir", APPS, "http_app:app"],
            port, env={"BENCH_DIR": data_dir, "PYTHONPATH": ROOT},
            cpu=CPUS[0] if pinned else None) as server:
        prime_replay(port)
        worker = worker_pid(server.process.pid)
        results: dict[str, list[tuple[float, ...]]] = {s: [] for s in SCENARIOS}
        for _ in range(args.rounds):
            for name, (path, script, env) in SCENARIOS.items():
                results[name].append(wrk(port, path, script, env, args.clients[0],
                                         args.duration, pinned, worker))
    report(results, args, pinned)


def report(results: dict, args, pinned: bool) -> None:
    medians = {name: tuple(median([r[i] for r in runs]) for i in range(len(COLUMNS)))
               for name, runs in results.items()}
    placement = (f"server on CPU {CPUS[0]}, wrk -t1 on CPU {CPUS[1]}" if pinned
                 else "server and wrk -t2 share every CPU")
    print(f"HTTP: gunicorn gthread 1x{args.threads}, wrk -c{args.clients[0]} "
          f"-d{args.duration:g}s, {placement}; medians of {args.rounds} interleaved rounds")
    print(table(["scenario", *COLUMNS], [(name, *m) for name, m in medians.items()]))
    a, b, c, d, e, f = medians.values()
    print()
    print(table(["ratio", "req/s", "p99", "server µs/req", "target"], [
        ("(c) / (b)", c[0] / b[0], c[2] / b[2], c[3] / b[3], "req/s >= 0.90, p99 <= 1.5"),
        ("(d) / (a)", d[0] / a[0], d[2] / a[2], d[3] / a[3], "req/s >= 0.90, p99 <= 1.5"),
        ("(d) / (e)", d[0] / e[0], d[2] / e[2], d[3] / e[3],
         "(reference: same request, no replay)"),
        ("(c) / (f)", c[0] / f[0], c[2] / f[2], c[3] / f[3],
         "(reference: minimal hand-rolled layer)"),
    ]))


if __name__ == "__main__":
    main()
