"""Scale: durable latency with 10^3, 10^5 and 10^6 stored records; purge of 10^6 expired rows.

Each size gets a fresh SQLite database shared by the app and the store, filled with that
many completed records; the sizes are measured in interleaved rounds. Latency is measured
in-process (WSGI calls, no network) so that only the store's scaling shows: first execution
(a fresh key) and replay of stored keys that are not in the process cache (each replayed
once, so every replay reads the database).
Then every record is expired and ``Store.purge`` runs while a writer thread keeps making
durable POSTs; the longest time one of those POSTs took is the purge's stall.
Uses --rounds (repetitions of each latency sample) and --events (requests per sample).
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import threading
import time

import peewee
from common import parse_args, table
from flask import Flask

from flask_cnerium import Cnerium, created
from flask_cnerium.durable import canonical_body

SIZES = (1_000, 100_000, 1_000_000)
CACHE_MIB = int(os.environ.get("SCALE_CACHE_MIB", "0"))
"""SQLite page cache per connection for the app's database; 0 keeps SQLite's 2 MiB."""
BODY = b'{"name": "bench"}'


def make_app(data_dir: str) -> Flask:
    """An app whose durable route inserts one row; store shared with the app's database."""
    pragmas = {"journal_mode": "wal", "synchronous": "normal"}
    if CACHE_MIB:
        pragmas["cache_size"] = -1024 * CACHE_MIB
    db = peewee.SqliteDatabase(os.path.join(data_dir, "app.db"), timeout=5, pragmas=pragmas)
    db.execute_sql("CREATE TABLE IF NOT EXISTS item (id INTEGER PRIMARY KEY, name TEXT)")
    app = Flask(__name__)
    app.config["CNERIUM_DATA_DIR"] = data_dir
    cnerium = Cnerium(app, database=db)

    @cnerium.durable_post("/items", "items.create")
    def create_item(request):
        cursor = db.execute_sql("INSERT INTO item (name) VALUES (?)", (request.json()["name"],))
        return created({"ok": True, "id": cursor.lastrowid})

    assert cnerium.start()
    return app


def fill(data_dir: str, count: int) -> None:
    """Insert ``count`` completed records with keys ``k<i>`` straight into the table.

    Their fingerprints are those of a POST of ``BODY``, so posting it again replays them.
    """
    head = b"items.create\nPOST\n/items\napplication/json\n"
    raw = hashlib.sha256(head + BODY).hexdigest()
    canonical = hashlib.sha256(head + canonical_body("application/json", BODY)).hexdigest()
    conn = sqlite3.connect(os.path.join(data_dir, "app.db"))
    now = time.time()
    rows = ((f"k{i}", canonical, raw, now, now + 86400) for i in range(count))
    with conn:
        conn.executemany(
            "INSERT INTO cnerium_idempotency (scope, idempotency_key, operation, fingerprint, "
            "raw_fingerprint, state, status, headers, body, node_id, owner, created_at, "
            "expires_at) VALUES ('', ?, 'items.create', ?, ?, 'completed', 201, "
            "'[[\"Content-Type\", \"application/json\"]]', X'7b7d', 'bench', 'o', ?, ?)", rows)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def post(app: Flask, key: str, body: bytes = BODY) -> str:
    """One durable POST through the WSGI interface; fails unless it is a 201."""
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/items", "SCRIPT_NAME": "",
               "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80",
               "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
               "wsgi.errors": sys.stderr, "wsgi.input": io.BytesIO(body),
               "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
               "wsgi.version": (1, 0), "CONTENT_TYPE": "application/json",
               "CONTENT_LENGTH": str(len(body)), "HTTP_IDEMPOTENCY_KEY": key}
    status = []
    b"".join(app(environ, lambda s, h, e=None: status.append(s)))
    assert status[0].startswith("201"), status[0]
    return status[0]


def timed(call, keys) -> list[float]:
    """Milliseconds each call took, one call per key."""
    out = []
    for key in keys:
        start = time.perf_counter()
        call(key)
        out.append((time.perf_counter() - start) * 1000)
    return out


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def measure(apps: dict[int, Flask], args) -> dict[int, dict[str, list[float]]]:
    """Latencies at each size, the sizes interleaved round by round (A B C A B C …)."""
    results = {count: {"first": [], "replay": []} for count in apps}
    for round_ in range(args.rounds):
        for count, app in apps.items():
            fresh = [f"new-{round_}-{i}" for i in range(args.events)]
            stored = [f"k{random.randrange(count)}" for _ in range(args.events)]
            results[count]["first"] += timed(lambda k, app=app: post(app, k), fresh)
            results[count]["replay"] += timed(lambda k, app=app: post(app, k), stored)
    return results


def purge_with_writer(data_dir: str) -> tuple[float, int, float]:
    """Expire everything, purge it while a writer posts; seconds, rows, longest POST (ms)."""
    conn = sqlite3.connect(os.path.join(data_dir, "app.db"))
    with conn:
        conn.execute("UPDATE cnerium_idempotency SET expires_at = 0")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # set-up, not part of what is measured
    conn.close()
    app = make_app(data_dir)
    store = app.extensions["cnerium"].store
    done = threading.Event()
    stalls: list[float] = []

    def writer() -> None:
        i = 0
        while not done.is_set():
            stalls.extend(timed(lambda k: post(app, k), [f"writer-{i}"]))
            i += 1
            time.sleep(0.002)

    thread = threading.Thread(target=writer)
    thread.start()
    start = time.perf_counter()
    removed = sum(store.purge())
    elapsed = time.perf_counter() - start
    done.set()
    thread.join()
    return elapsed, removed, max(stalls)


def main() -> None:
    args = parse_args(__doc__, rounds=3, events=300)
    apps, data_dirs = {}, {}
    for count in SIZES:
        data_dirs[count] = tempfile.mkdtemp(prefix=f"cnerium-scale-{count}-")
        apps[count] = make_app(data_dirs[count])
        fill(data_dirs[count], count)
        post(apps[count], "warm-up")
    results = measure(apps, args)
    largest_dir = data_dirs[SIZES[-1]]
    rows = []
    for count, r in results.items():
        rows.append((f"{count:,}", statistics.median(r["first"]), p99(r["first"]),
                     statistics.median(r["replay"]), p99(r["replay"])))
    cache = f"{CACHE_MIB} MiB" if CACHE_MIB else "SQLite's default 2 MiB"
    print(f"Scale: in-process durable POST latency (ms), {args.rounds} x {args.events} "
          f"requests per size; replays read the database (never the cache); page cache "
          f"{cache} (SCALE_CACHE_MIB)")
    print(table(["records", "first p50", "first p99", "replay p50", "replay p99"], rows))
    small, large = results[SIZES[0]], results[SIZES[-1]]
    first_ratio = statistics.median(large["first"]) / statistics.median(small["first"])
    replay_ratio = statistics.median(large["replay"]) / statistics.median(small["replay"])
    print(f"\nat 10^6 vs 10^3 (p50): first execution {first_ratio:.2f}x, replay "
          f"{replay_ratio:.2f}x (target <= 1.2x)")
    elapsed, removed, stall = purge_with_writer(largest_dir)
    print(f"\npurge: {removed:,} expired records in {elapsed:.1f} s; longest concurrent "
          f"durable POST {stall:.1f} ms (target <= 100 ms)")


if __name__ == "__main__":
    main()
