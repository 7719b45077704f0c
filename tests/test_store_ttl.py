"""SPEC §2.5: records past ``CNERIUM_KEY_TTL`` are treated as absent and purged in batches."""

from __future__ import annotations

import time

import pytest

from tests.conftest import BACKENDS
from tests.durable_helpers import (
    ORDER,
    RECORDS,
    Background,
    orders,
    post,
    problem_slug,
    query,
    records,
    wait_for,
)


def test_record_past_its_ttl_is_treated_as_new(make_app):
    app = make_app(config={"CNERIUM_KEY_TTL": 0.5})
    client = app.test_client()
    first = post(client, ORDER)
    assert post(client, ORDER).headers["Idempotent-Replayed"] == "true"
    expires_at = records(app)[0].expires_at
    assert expires_at == pytest.approx(time.time() + 0.5, abs=0.5)
    wait_for(lambda: time.time() > expires_at, what="the record to expire")

    again = post(client, ORDER)
    assert again.status_code == 201
    assert "Idempotent-Replayed" not in again.headers
    assert again.get_json()["run"] == first.get_json()["run"] + 1
    assert orders(app) == 2


def test_expired_key_may_be_reused_for_another_request(make_app):
    app = make_app(config={"CNERIUM_KEY_TTL": 0.3})
    client = app.test_client()
    post(client, ORDER)
    assert post(client, {"product_id": "p2"}).status_code == 409
    time.sleep(0.35)
    assert post(client, {"product_id": "p2"}).status_code == 201
    assert len(records(app)) == 1
    assert orders(app) == 2


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_record_moved_past_its_expiry_in_the_database_is_treated_as_new(make_app, backend):
    client = make_app(**backend.app_kwargs()).test_client()
    assert post(client, ORDER).status_code == 201
    query(backend.records_url, f"UPDATE {RECORDS} SET expires_at = %s", (time.time() - 1,))

    # Another worker (a fresh app: no cache of its own) reads the expired row.
    app = make_app(**backend.app_kwargs())
    again = post(app.test_client(), ORDER)
    assert again.status_code == 201
    assert "Idempotent-Replayed" not in again.headers
    assert orders(app) == 2
    [record] = records(app)
    assert record.state == "completed" and record.expires_at > time.time()


def test_default_ttl_is_a_day(app, client):
    post(client, ORDER)
    [record] = records(app)
    assert record.expires_at - record.created_at == pytest.approx(86400, abs=5)


@pytest.mark.parametrize("backend", ["sqlite-separate", "pg-separate"], indirect=True)
def test_purge_removes_only_expired_records_in_batches(make_app, backend):
    app = make_app(**backend.app_kwargs())
    client = app.test_client()
    for i in range(7):
        assert post(client, ORDER, key=f"k{i}").status_code == 201
    past = time.time() - 1
    query(backend.records_url, f"UPDATE {RECORDS} SET expires_at = %s WHERE "
          "idempotency_key IN ('k0', 'k1', 'k2', 'k3', 'k4')", (past,))
    # An expired claim whose lease is still running is left alone until the lease ends.
    query(backend.records_url, f"UPDATE {RECORDS} SET state = 'in_progress', "
          "lease_expires_at = %s WHERE idempotency_key = 'k4'", (time.time() + 60,))

    store = app.extensions["cnerium"].store
    assert store.count_purgeable() == 4  # what the CLI's progress bar counts
    assert list(store.purge(batch_size=2, pause=0)) == [2, 2]
    assert sorted(r.key for r in records(app)) == ["k4", "k5", "k6"]

    query(backend.records_url, f"UPDATE {RECORDS} SET lease_expires_at = %s "
          "WHERE idempotency_key = 'k4'", (past,))
    assert store.count_purgeable() == 1
    assert list(store.purge(batch_size=2, pause=0)) == [1]
    assert sorted(r.key for r in records(app)) == ["k5", "k6"]
    assert store.count_purgeable() == 0
    assert list(store.purge()) == []


@pytest.mark.parametrize("backend", ["sqlite-separate", "sqlite-shared"], indirect=True)
def test_purge_checkpoints_sqlite_outside_its_batches(make_app, backend):
    """A batch's commit must not run SQLite's automatic checkpoint (its copy and fsync would
    hold every writer up); purge checkpoints after letting the lock go, and leaves the
    connection's own setting as it found it."""
    app = make_app(**backend.app_kwargs())
    client = app.test_client()
    for i in range(5):
        assert post(client, ORDER, key=f"k{i}").status_code == 201
    query(backend.records_url, f"UPDATE {RECORDS} SET expires_at = %s", (time.time() - 1,))
    store = app.extensions["cnerium"].store
    seen_in_batches = []
    checkpoints = []
    release = store._lock.release

    def release_and_look() -> None:  # still inside the batch's connection, just committed
        pages = store.database.execute_sql("PRAGMA wal_autocheckpoint").fetchone()[0]
        seen_in_batches.append(pages)
        release()

    execute_sql = store.database.execute_sql

    def watching_execute_sql(sql, *args, **kwargs):
        if sql.startswith("PRAGMA wal_checkpoint"):
            checkpoints.append(store._lock._thread_lock.locked())
        return execute_sql(sql, *args, **kwargs)

    with store.connection():
        store.database.execute_sql("PRAGMA wal_autocheckpoint = 123")
        store._lock.release = release_and_look
        store.database.execute_sql = watching_execute_sql
        try:
            assert list(store.purge(batch_size=2, pause=0)) == [2, 2, 1]
        finally:
            store._lock.release = release
            store.database.execute_sql = execute_sql
        assert store.database.execute_sql("PRAGMA wal_autocheckpoint").fetchone()[0] == 123
    assert seen_in_batches == [0, 0, 0]
    assert checkpoints == [False, False, False]  # one per batch, none under the writer lock
    assert records(app) == []


def test_a_running_claim_is_not_expired_by_the_ttl(make_app):
    """The TTL retains stored responses; a live claim lasts as long as its lease."""
    app = make_app(config={"CNERIUM_KEY_TTL": 0.3})
    client = app.test_client()
    slow = {**ORDER, "sleep": 1.2}
    first = Background(lambda: post(client, slow))
    [claim] = wait_for(lambda: records(app), what="the claim")
    wait_for(lambda: time.time() > claim.expires_at + 0.1, what="the TTL to pass")
    twin = post(client, slow)
    assert twin.status_code == 409
    assert problem_slug(twin) == "request-in-progress"
    assert first.result().status_code == 201
    assert orders(app) == 1
