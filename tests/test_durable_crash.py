"""Crashes and restarts: a raising handler, a SIGKILLed worker, a restarted app.

With the store in the app's database (``database=``) the order and its record commit
together or not at all; with a separate store a killed worker leaves a claim that is
taken over once its lease (``CNERIUM_LOCK_TIMEOUT``) runs out.
"""

from __future__ import annotations

import functools
import time

import pytest

from tests.apps.durable_app import app_env
from tests.durable_helpers import (
    ORDER,
    ORDERS,
    RECORDS,
    Background,
    assert_stored_or_in_progress,
    count,
    http_post,
    orders,
    post,
    prepare,
    query,
    records,
    run_together,
    wait_for,
)

LOCK_TIMEOUT = 2
BLOCKING = {**ORDER, "block": True}


@pytest.mark.parametrize("backend", ["sqlite-shared", "pg-shared"], indirect=True)
def test_shared_database_handler_raising_after_its_write_leaves_neither(make_app, backend):
    app = make_app(**backend.app_kwargs())
    with pytest.raises(RuntimeError):
        post(app.test_client(), {**ORDER, "fail": True})
    assert orders(app) == 0
    assert records(app) == []
    assert count(backend.database_url, ORDERS) == count(backend.records_url, RECORDS) == 0


def start_blocked_request(live_server, backend, tmp_path):
    """A server whose handler has written its order and now waits at the gate; the request."""
    prepare(backend)
    gate = tmp_path / "gate"
    gate.touch()
    env = app_env(backend.data_dir, mode=backend.mode, database_url=backend.database_url,
                  store_url=backend.store_url, gate=str(gate),
                  config={"CNERIUM_LOCK_TIMEOUT": LOCK_TIMEOUT})
    server = live_server(env)
    request = Background(lambda: http_post(server.url, "/orders", BLOCKING, "crash-1"))
    wait_for(lambda: (tmp_path / "gate.entered").exists(), what="the handler to block")
    return server, request, gate, env


def kill(server, request, gate) -> float:
    server.kill()
    with pytest.raises(OSError):  # the connection died with the worker
        request.result()
    gate.unlink()
    return time.time()


@pytest.mark.parametrize("backend", ["sqlite-shared", "pg-shared"], indirect=True)
def test_shared_database_worker_killed_mid_handler_leaves_neither(
        live_server, backend, tmp_path):
    server, request, gate, env = start_blocked_request(live_server, backend, tmp_path)
    killed_at = kill(server, request, gate)

    assert count(backend.database_url, ORDERS) == 0, "an order survived without its record"
    assert count(backend.records_url, RECORDS) == 0

    restarted = live_server(env)
    time.sleep(max(0.0, killed_at + LOCK_TIMEOUT - time.time()))
    answers = run_together([functools.partial(http_post, restarted.url, "/orders", BLOCKING,
                                              "crash-1")] * 4)
    assert sorted(a.status for a in answers) == [201] * 4
    assert sum("idempotent-replayed" not in a.headers for a in answers) == 1
    assert count(backend.database_url, ORDERS) == 1
    [(state, body)] = query(backend.records_url, f"SELECT state, body FROM {RECORDS}")
    assert state == "completed" and bytes(body) == answers[0].body


@pytest.mark.parametrize("backend", ["sqlite-separate", "pg-separate"], indirect=True)
def test_separate_store_worker_killed_mid_handler_is_taken_over_after_the_lock_timeout(
        live_server, make_app, backend, tmp_path):
    server, request, gate, env = start_blocked_request(live_server, backend, tmp_path)
    kill(server, request, gate)

    # The killed run's order committed on its own (a separate store cannot prevent that),
    # and its claim stays behind, in progress, until its lease runs out.
    assert count(backend.database_url, ORDERS) == 1
    [(state, lease)] = query(backend.records_url,
                             f"SELECT state, lease_expires_at FROM {RECORDS}")
    assert state == "in_progress"

    early = post(make_app(**backend.app_kwargs()).test_client(), BLOCKING, key="crash-1")
    assert time.time() < lease, "too slow to test the retry before the lease ran out"
    assert early.status_code == 409
    assert early.get_json()["type"].endswith("/request-in-progress")

    restarted = live_server(env)
    time.sleep(max(0.0, lease - time.time() + 0.05))
    answers = run_together([functools.partial(http_post, restarted.url, "/orders", BLOCKING,
                                              "crash-1")] * 4)
    originals = [a for a in answers if a.status == 201 and "idempotent-replayed" not in a.headers]
    assert len(originals) == 1, [a.status for a in answers]
    assert count(backend.database_url, ORDERS) == 2  # the killed run's and the takeover's
    [(state, body)] = query(backend.records_url, f"SELECT state, body FROM {RECORDS}")
    assert state == "completed" and bytes(body) == originals[0].body
    for answer in answers:  # the takeover's twins: its replay, or told it is still running
        assert_stored_or_in_progress(answer, bytes(body))
    replay = http_post(restarted.url, "/orders", BLOCKING, "crash-1")
    assert replay.headers["idempotent-replayed"] == "true" and replay.body == bytes(body)
    assert count(backend.database_url, ORDERS) == 2


@pytest.mark.parametrize("backend", ["sqlite-separate", "sqlite-shared"], indirect=True)
def test_stored_response_survives_a_restart(live_server, backend):
    env = app_env(backend.data_dir, mode=backend.mode, database_url=backend.database_url)
    first_server = live_server(env)
    first = http_post(first_server.url, "/orders", ORDER, "order-123")
    assert first.status == 201
    first_server.stop()

    second = http_post(live_server(env).url, "/orders", ORDER, "order-123")
    assert (second.status, second.body) == (201, first.body)
    assert second.headers["content-type"] == first.headers["content-type"]
    assert second.headers["idempotent-replayed"] == "true"
    assert count(backend.database_url, ORDERS) == 1
