"""Exactly once across gunicorn workers: 3 workers, a PostgreSQL store, 200 concurrent POSTs.

SPEC §2.3 across processes (issue 4): the handler runs once per key whichever worker gets
each twin, and every other answer is the stored response byte for byte or a 409 in-progress.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from tests.apps.durable_app import app_env
from tests.durable_helpers import (
    ORDER,
    assert_stored_or_in_progress,
    http_post,
    query,
    run_together,
)
from tests.live import free_port, stop_process

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = Path(sys.executable).with_name("gunicorn")
KEYS, TWINS, WORKERS = 20, 10, 3


def _worker_pid(base: str) -> str:
    """The pid of the worker that answers ``GET /health`` on a new connection."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", "/health")
        response = conn.getresponse()
        response.read()
        return response.getheader("X-Test-Pid")
    finally:
        conn.close()


def _wait_for_workers(base: str, process: subprocess.Popen, timeout: float = 60) -> None:
    """Until every worker has answered: the master listens before its workers boot."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < WORKERS:
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, f"only workers {seen} answered"
        try:
            seen.add(_worker_pid(base))
        except OSError:
            time.sleep(0.05)


@pytest.fixture
def gunicorn(tmp_path: Path):
    """Start gunicorn (3 gthread workers) on the durable test app; stop it afterwards."""
    processes = []

    def start(env: dict[str, str], preload: bool = False) -> str:
        port = free_port()
        # --worker-connections: a worker holding 60 connections lets the others accept
        argv = [str(GUNICORN), "-w", str(WORKERS), "-k", "gthread", "--threads", "8",
                "--worker-connections", "60",
                "-b", f"127.0.0.1:{port}", "--graceful-timeout", "2",
                *(["--preload"] * preload), "tests.apps.durable_app:create_app_from_env()"]
        env = {**env, "CNERIUM_TEST_START": "1" if preload else "0"}
        process = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **env},
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   start_new_session=True)
        processes.append(process)
        base = f"http://127.0.0.1:{port}"
        _wait_for_workers(base, process)
        return base

    yield start
    for process in processes:
        stop_process(process, group=True)


@pytest.mark.parametrize(("mode", "store", "preload"), [
    ("shared", "postgresql", False), ("separate", "postgresql", False),
    ("separate", "postgresql", True), ("separate", "sqlite", True)])
def test_three_workers_run_each_key_once(gunicorn, pg_url: str, tmp_path: Path, mode: str,
                                         store: str, preload: bool) -> None:
    """With --preload, Cnerium starts in the master: each worker must open its own
    connections and file lock rather than share the master's."""
    store_url = None if mode == "shared" else pg_url if store == "postgresql" else None
    base = gunicorn(app_env(str(tmp_path), mode=mode, database_url=pg_url,
                            store_url=store_url, config={"CNERIUM_LOCK_TIMEOUT": 30}),
                    preload=preload)
    keys = [f"order-{i}" for i in range(KEYS)]
    body = {**ORDER, "sleep": 0.05}
    calls = [lambda key=key: http_post(base, "/orders", body, key) for key in keys
             for _ in range(TWINS)]
    answers = run_together(calls, timeout=120)
    errors = [a for a in answers if isinstance(a, BaseException)]
    assert not errors, errors

    assert len({a.headers["x-test-pid"] for a in answers}) == WORKERS, "a worker served none"
    by_key: dict[str, list] = defaultdict(list)
    for key, answer in zip([k for k in keys for _ in range(TWINS)], answers, strict=True):
        by_key[key].append(answer)
    records_url = pg_url if store == "postgresql" else f"sqlite:///{tmp_path}/cnerium.db"
    stored = dict(query(records_url, "SELECT idempotency_key, body FROM cnerium_idempotency "
                                     "WHERE state = 'completed'"))
    assert len(stored) == KEYS and len(set(stored.values())) == KEYS
    worker_pids = {a.headers["x-test-pid"] for a in answers}
    node_pids = {node.rsplit("-", 1)[1] for (node,) in query(
        records_url, "SELECT DISTINCT node_id FROM cnerium_idempotency")}
    assert node_pids <= worker_pids, "records stamped with another process's node id"
    runs = dict(query(pg_url, "SELECT idempotency_key, COUNT(*) FROM test_orders "
                              "GROUP BY idempotency_key"))
    assert runs == {key: 1 for key in keys}
    for key, key_answers in by_key.items():
        executed = [a for a in key_answers if a.status == 201
                    and "idempotent-replayed" not in a.headers]
        assert len(executed) == 1  # the one answer that ran the handler is not a replay
        for answer in key_answers:
            assert_stored_or_in_progress(answer, bytes(stored[key]))
