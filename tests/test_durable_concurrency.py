"""SPEC §2.3: one key from 16 threads in each of 4 processes at once runs its handler once.

Four server subprocesses share the store (a SQLite file or a PostgreSQL database, separate
or inside the app's database); 16 client threads per server are released by one barrier.
Handler runs are counted in the database: one committed order per run.
"""

from __future__ import annotations

import functools

import pytest

from tests.apps.durable_app import app_env
from tests.conftest import BACKENDS
from tests.durable_helpers import (
    ORDER,
    ORDERS,
    RECORDS,
    HttpAnswer,
    assert_stored_or_in_progress,
    count,
    http_post,
    prepare,
    query,
    run_together,
)

PROCESSES = 4
THREADS = 16


@pytest.mark.parametrize("start", ["started", "cold"])
@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_one_key_from_many_threads_and_processes_runs_once(live_server, backend, start):
    """``cold``: no table exists yet, every worker starts Cnerium lazily inside the race."""
    if start == "started":
        prepare(backend)
    env = app_env(backend.data_dir, mode=backend.mode, database_url=backend.database_url,
                  store_url=backend.store_url)
    servers = [live_server(env, wait=False) for _ in range(PROCESSES)]
    for server in servers:
        server.wait_ready()

    body = {**ORDER, "sleep": 0.2}  # long enough for twins to arrive while it runs
    calls = [functools.partial(http_post, server.url, "/orders", body, "race-1")
             for server in servers for _ in range(THREADS)]
    answers = run_together(calls)

    errors = [a for a in answers if not isinstance(a, HttpAnswer)]
    assert not errors, errors[:3]
    assert count(backend.database_url, ORDERS) == 1, "the handler ran more than once"
    [(state, status, stored)] = query(backend.records_url,
                                      f"SELECT state, status, body FROM {RECORDS}")
    assert (state, status) == ("completed", 201)

    statuses = {}
    for answer in answers:
        statuses[answer.status] = statuses.get(answer.status, 0) + 1
        assert_stored_or_in_progress(answer, bytes(stored))
    originals = [a for a in answers
                 if a.status == 201 and "idempotent-replayed" not in a.headers]
    assert len(originals) == 1, statuses

    # Every worker now replays it.
    for server in servers:
        again = http_post(server.url, "/orders", body, "race-1")
        assert (again.status, again.body) == (201, bytes(stored))
        assert again.headers["idempotent-replayed"] == "true"
    assert count(backend.database_url, ORDERS) == 1
