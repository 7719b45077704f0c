"""Fanout: N WebSocket clients in one room; flask-cnerium against two peers, interleaved.

Systems: flask-cnerium (emit_to), a naive flask-sock loop (room -> sockets, ws.send in the
emitting thread), Flask-SocketIO in threading mode; each under gunicorn gthread (1 worker,
one thread per connection) with SO_SNDBUF 64 KiB on accepted sockets, all started once.
For each N in --clients and each of --rounds rounds, each system in turn (A B C A B C):
N clients connect (two client processes, one selector thread each), --events events are
emitted as fast as possible (burst); at the largest N (where issue 6's targets are), then
also 40 events/s for --duration seconds (paced).
Reported: delivered msgs/s (messages received by all clients / first emit to last
receive), p50/p99 emit-to-receive latency, and server CPU per delivered message (paced).
Then the largest N once more with one more client that stops reading. Medians of rounds.
Writes benchmarks/out/fanout.png (burst msgs/s vs N).
"""

from __future__ import annotations

import itertools
import os
import tempfile
import time
from dataclasses import dataclass, field

from common import ROOT, cpu_seconds, median, parse_args, table
from wsbench import (
    LABELS,
    SYSTEMS,
    WORKERS,
    Clients,
    http,
    percentile,
    stalled_client,
    start_server,
    wait_idle,
)

OUT = os.path.join(ROOT, "benchmarks", "out")
RATE = 40.0
"""Events per second in the paced phase."""
IDLE = 3.0
"""Seconds without a delivered message after which a phase is declared frozen."""
BURST_CAP = 6.0
"""Seconds a burst is measured at most: a slower system's rate is taken over this window."""
WARM_UP_CAP = 3.0
"""Seconds the unmeasured warm-up burst after each connect lasts at most."""
PACED_TAIL = 2.0
"""Seconds the paced phase is measured beyond --duration at most."""
VERBOSE = bool(os.environ.get("BENCH_VERBOSE"))
"""Print every phase as it is measured (BENCH_VERBOSE=1)."""
_phases = itertools.count(1)


@dataclass
class Phase:
    """One measured phase of one system: what all clients received."""

    total: int
    expected: int
    seconds: float
    p50: float
    p99: float
    client_cpu: float
    server_cpu: float
    end: str
    """``done`` (every client got every event), ``cut`` (still delivering at the time cap)
    or ``froze`` (no event reached any client for IDLE seconds)."""

    @property
    def froze(self) -> bool:
        """Whether delivery stopped before every client had every event."""
        return self.end == "froze"

    @property
    def rate(self) -> float:
        """Delivered messages per second."""
        return self.total / self.seconds if self.seconds > 0 else float("nan")

    @property
    def us_per_msg(self) -> float:
        """Server CPU microseconds per delivered message."""
        return self.server_cpu / self.total * 1e6 if self.total else float("nan")


@dataclass
class Runs:
    """Every round of one (system, N, stalled) cell."""

    burst: list[Phase] = field(default_factory=list)
    paced: list[Phase] = field(default_factory=list)


def measure(clients: Clients, server, n: int, events: int, rate: float,
            timeout: float) -> Phase:
    """Emit ``events`` (``rate`` per second, 0: at once) and collect what the clients got.

    A phase still delivering after ``timeout`` seconds is cut there and its emitter stopped.
    """
    phase = next(_phases)
    clients.all([{"cmd": "measure", "system": server.system, "phase": phase,
                  "events": events, "timeout": timeout, "idle": IDLE}] * WORKERS)
    cpu = cpu_seconds(server.pid)
    http(server.port, "POST", f"/bench/emit?events={events}&rate={rate:g}&phase={phase}")
    results = clients.replies(timeout + 30)
    server_cpu = cpu_seconds(server.pid) - cpu
    total = sum(r["total"] for r in results)
    if total < n * events:
        http(server.port, "POST", "/bench/stop")
    ends = {r["reason"] for r in results}
    end = "done" if total >= n * events else "cut" if "cut" in ends else "froze"
    histogram = [tuple(pair) for r in results for pair in r["histogram"]]
    first = [r["first_t"] for r in results if r["first_t"]]
    last = [r["last_recv"] for r in results if r["last_recv"]]
    seconds = max(last) - min(first) if first else float("nan")
    return Phase(total=total, expected=n * events, seconds=seconds,
                 p50=percentile(histogram, 0.50), p99=percentile(histogram, 0.99),
                 client_cpu=max(r["cpu"] for r in results) / seconds if first else 0.0,
                 server_cpu=server_cpu, end=end)


def episode(clients: Clients, server, n: int, args, runs: Runs, stalled: bool,
            paced: bool) -> None:
    """One round of one system: burst, then paced if ``paced`` (``stalled``: with a client
    that stops reading)."""
    started = time.monotonic()
    stuck = stalled_client(server) if stalled else None
    try:
        burst = measure(clients, server, n, args.events, 0, timeout=BURST_CAP)
        runs.burst.append(burst)
        if burst.end != "done" and not wait_idle(server, timeout=IDLE if burst.froze else 10):
            # Asked to stop, the emitting thread is still blocked in a send: it froze, and so
            # would the paced phase.
            burst.end = "froze"
            if paced:
                runs.paced.append(Phase(0, n * events_paced(args), float("nan"), float("nan"),
                                        float("nan"), 0.0, 0.0, "froze"))
        elif paced:
            clients.settle()
            runs.paced.append(measure(clients, server, n, events_paced(args), RATE,
                                      timeout=args.duration + PACED_TAIL))
    finally:
        if stuck is not None:
            stuck.close()
        wait_idle(server)
        clients.settle()
    if VERBOSE:
        progress(f"{server.system} N={n}{' +stalled' if stalled else ''}: burst "
                 f"{runs.burst[-1]}, paced {runs.paced[-1] if paced else '-'}, "
                 f"{time.monotonic() - started:.1f} s")


def events_paced(args) -> int:
    """Events in the paced phase: RATE per second for --duration seconds."""
    return max(1, round(RATE * args.duration))


def warm_up(clients: Clients, server, n: int, events: int) -> None:
    """An unmeasured burst right after connecting: the first one after a connect is slower."""
    measure(clients, server, n, events, 0, timeout=WARM_UP_CAP)
    wait_idle(server)
    clients.settle()


def run(args) -> tuple[dict, dict]:
    """All measurements: {(system, n): Runs} without, and {system: Runs} with a stalled client.

    The clients of all three systems stay connected for every round at one N; one system is
    measured at a time.
    """
    plain: dict = {(s, n): Runs() for s in SYSTEMS for n in args.clients}
    stall: dict = {s: Runs() for s in SYSTEMS}
    biggest = max(args.clients)
    with tempfile.TemporaryDirectory() as log_dir, Clients() as clients:
        servers = {}
        try:
            for system in SYSTEMS:
                servers[system] = start_server(system, biggest + 32, log_dir)
            for n in sorted(args.clients):
                for system in SYSTEMS:
                    clients.connect(servers[system], n)
                    warm_up(clients, servers[system], n, args.events)
                for _ in range(args.rounds):
                    for system in SYSTEMS:
                        episode(clients, servers[system], n, args, plain[system, n], False,
                                paced=n == biggest)
                progress(f"N={n} done")
                if n == biggest:
                    for _ in range(args.rounds):
                        for system in SYSTEMS:
                            episode(clients, servers[system], n, args, stall[system], True,
                                    paced=True)
                    progress(f"N={n} with a stalled client done")
                for system in SYSTEMS:
                    clients.close(system)
        finally:
            for server in servers.values():
                server.stop()
    return plain, stall


def progress(text: str) -> None:
    """A line on the progress of a long run."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def summary(phases: list[Phase]) -> dict:
    """Medians of a cell's rounds; ``froze`` when most rounds froze."""
    froze = sum(p.froze for p in phases) * 2 > len(phases)
    ok = [p for p in phases if not p.froze]
    done = sum(p.end == "done" for p in phases)
    cut = sum(p.end == "cut" for p in phases)
    rounds = f"{done}/{len(phases)}" + (f", {cut} cut" if cut else "")
    return {"froze": froze, "rounds": rounds,
            "rate": median([p.rate for p in ok]), "p50": median([p.p50 for p in ok]),
            "p99": median([p.p99 for p in ok]), "us": median([p.us_per_msg for p in ok]),
            "client": max((p.client_cpu for p in phases), default=0.0)}


def cells(s: dict, *names: str) -> list:
    """The table cells of a summary (``froze`` for a system that did not deliver)."""
    if s["froze"]:
        return ["froze"] * len(names)
    return [round(s[name]) if name == "rate" else s[name] for name in names]


def report(plain: dict, stall: dict, args) -> dict:
    """Print the tables; the summaries for the targets and the plot."""
    biggest = max(args.clients)
    burst = {key: summary(runs.burst) for key, runs in plain.items()}
    paced = {key: summary(runs.paced) for key, runs in plain.items() if runs.paced}
    print(f"\nFanout, burst: {args.events} events as fast as possible to N clients in one room "
          f"(medians of {args.rounds} interleaved rounds; a burst still delivering after "
          f"{BURST_CAP:g} s is cut there and its rate taken over that window)")
    rows = []
    for n in args.clients:
        naive = burst["naive", n]["rate"]
        for system in SYSTEMS:
            s = burst[system, n]
            rows.append([n, LABELS[system], *cells(s, "rate", "p50", "p99"),
                         "-" if s["froze"] else s["rate"] / naive, s["rounds"], s["client"]])
    print(table(["N", "system", "msgs/s", "p50 ms", "p99 ms", "x naive", "complete",
                 "client CPU"], rows))
    print(f"\nFanout, paced: {RATE:g} events/s for {args.duration:g} s to N={biggest} clients")
    rows = [[LABELS[system], *cells(paced[system, biggest], "rate", "p50", "p99", "us"),
             paced[system, biggest]["rounds"]] for system in SYSTEMS]
    print(table(["system", "msgs/s", "p50 ms", "p99 ms", "server us/msg", "complete"], rows))
    stalled = {s: (summary(r.burst), summary(r.paced)) for s, r in stall.items()}
    print(f"\nThe same at N={biggest} with one more client that stops reading (4 KiB receive "
          f"buffer): figures for the {biggest} others")
    rows = [[LABELS[s], *cells(b, "rate", "p50", "p99"),
             "-" if b["froze"] else b["rate"] / burst[s, biggest]["rate"],
             *cells(p, "p50", "p99", "us"), f"{b['rounds']} / {p['rounds']}"]
            for s, (b, p) in stalled.items()]
    print(table(["system", "burst msgs/s", "p50 ms", "p99 ms", "x unstalled", "paced p50",
                 "paced p99", "paced us/msg", "complete burst / paced"], rows))
    return {"burst": burst, "paced": paced, "stalled": stalled}


def targets(results: dict, args) -> None:
    """Issue 6's fanout targets at the largest N, each met or missed."""
    n = max(args.clients)
    burst, paced, stalled = results["burst"], results["paced"], results["stalled"]
    c, naive, sio = burst["cnerium", n], burst["naive", n], burst["socketio", n]
    cs_b, cs_p = stalled["cnerium"]
    pc, pn = paced["cnerium", n], paced["naive", n]
    checks = [
        ("burst msgs/s >= 1.5 x naive", c["rate"] / naive["rate"],
         c["rate"] >= 1.5 * naive["rate"]),
        ("burst msgs/s >= 8 x Flask-SocketIO", c["rate"] / sio["rate"],
         c["rate"] >= 8 * sio["rate"]),
        ("burst p99 <= 50 ms", c["p99"], c["p99"] <= 50),
        ("stalled: burst msgs/s >= 0.9 x unstalled", cs_b["rate"] / c["rate"],
         not cs_b["froze"] and cs_b["rate"] >= 0.9 * c["rate"]),
        ("stalled: burst p99 <= 50 ms", cs_b["p99"], not cs_b["froze"] and cs_b["p99"] <= 50),
        ("stalled: paced p99 <= 2 x naive unstalled", cs_p["p99"] / pn["p99"],
         not cs_p["froze"] and cs_p["p99"] <= 2 * pn["p99"]),
        ("paced server us/msg <= naive", pc["us"] / pn["us"], pc["us"] <= pn["us"]),
        ("paced p99 <= 2 x naive", pc["p99"] / pn["p99"], pc["p99"] <= 2 * pn["p99"]),
    ]
    print(f"\nTargets (flask-cnerium, N={n})")
    print(table(["target", "measured", "met"], [(t, v, "yes" if ok else "NO")
                                                for t, v, ok in checks]))


def plot(results: dict, args) -> str:
    """benchmarks/out/fanout.png: burst msgs/s against N for the three systems."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "fanout.png")
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for system in SYSTEMS:
        ax.plot(args.clients, [results["burst"][system, n]["rate"] for n in args.clients],
                marker="o", label=LABELS[system])
    ax.set(xlabel="clients in the room (N)", ylabel="delivered messages/s (median)",
           title=f"Fanout burst: {args.events} events to N WebSocket clients",
           xticks=args.clients)
    top = max(results["burst"][system, n]["rate"] for system in SYSTEMS for n in args.clients)
    ax.set_ylim(0, top * 1.35 if top == top else None)  # room for the legend (top: not NaN)
    ax.yaxis.set_major_formatter(lambda value, _: f"{value / 1000:g}k")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main() -> None:
    args = parse_args(__doc__, rounds=3, clients=[50, 200, 500], events=1000, duration=5.0)
    started = time.monotonic()
    plain, stall = run(args)
    results = report(plain, stall, args)
    targets(results, args)
    path = plot(results, args)
    print(f"\nplot: {os.path.relpath(path, ROOT)}; {time.monotonic() - started:.0f} s in all")


if __name__ == "__main__":
    main()
