"""Twins of a running request: 409 in-progress, waiting for the replay, leases."""

from __future__ import annotations

import threading
import time

import pytest

from flask_cnerium import created
from tests.conftest import BACKENDS
from tests.durable_helpers import (
    ORDER,
    Background,
    orders,
    post,
    problem_slug,
    query,
    record_run,
    records,
    wait_for,
)


class Gate:
    """Holds chosen runs of the ``/gated`` handler until the test releases them."""

    def __init__(self, hold: tuple[int, ...] = (1,), fail: tuple[int, ...] = ()) -> None:
        self.hold, self.fail = hold, fail
        self.calls = 0
        self.entered = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()


def gated_app(make_app, gate: Gate, **kwargs):
    """A test app with ``/gated``: each run writes an order, the held ones wait at the gate."""
    app = make_app(**kwargs)

    @app.extensions["cnerium"].extension.durable_post("/gated", "test.gated")
    def gated(request):
        with gate._lock:
            gate.calls += 1
            call = gate.calls
        run = record_run(request)
        if call in gate.hold:
            gate.entered.set()
            assert gate.release.wait(60), "the test never opened the gate"
        if call in gate.fail:
            raise RuntimeError(f"run {call} failed")
        return created({"call": call, "run": run})

    return app


def gated_post(client, **kwargs):
    return post(client, ORDER, path="/gated", **kwargs)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_twin_of_a_running_request_gets_409_in_progress(make_app, backend):
    gate = Gate()
    # A twin sharing the database waits this long for the lock or row before its 409.
    app = gated_app(make_app, gate, **backend.app_kwargs(),
                    config={"CNERIUM_IN_FLIGHT_WAIT": 0.3} if backend.mode == "shared" else {})
    client = app.test_client()
    first = Background(lambda: gated_post(client))
    assert gate.entered.wait(30)

    twin = gated_post(client)
    assert twin.status_code == 409
    assert problem_slug(twin) == "request-in-progress"
    assert twin.headers["Retry-After"] == "1"

    other = post(client, {"product_id": "p2"}, path="/gated")
    assert other.status_code == 409
    if backend.mode == "separate":
        # The claim is committed, so a different body is recognised at once.
        assert problem_slug(other) == "idempotency-key-reused"

    gate.release.set()
    assert first.result().status_code == 201
    assert gate.calls == 1
    assert gated_post(client).headers["Idempotent-Replayed"] == "true"
    assert problem_slug(post(client, {"product_id": "p2"}, path="/gated")) == \
        "idempotency-key-reused"
    assert orders(app) == 1


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_with_in_flight_wait_the_twin_waits_and_gets_the_replay(make_app, backend):
    gate = Gate()
    app = gated_app(make_app, gate, **backend.app_kwargs(),
                    config={"CNERIUM_IN_FLIGHT_WAIT": 20})
    client = app.test_client()
    first = Background(lambda: gated_post(client))
    assert gate.entered.wait(30)
    twin = Background(lambda: gated_post(client))
    time.sleep(0.3)  # let the twin reach its wait; it must not answer before the release
    assert not twin.done(), "the twin answered while the first run was still running"
    released_at = time.monotonic()
    gate.release.set()

    original = first.result()
    replay = twin.result()
    assert twin.finished_at >= released_at
    assert original.status_code == replay.status_code == 201
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.data == original.data
    assert gate.calls == 1
    assert orders(app) == 1


def test_in_flight_wait_runs_out_with_409(make_app):
    gate = Gate()
    app = gated_app(make_app, gate, config={"CNERIUM_IN_FLIGHT_WAIT": 0.5})
    client = app.test_client()
    first = Background(lambda: gated_post(client))
    assert gate.entered.wait(30)
    started = time.monotonic()
    twin = gated_post(client)
    assert time.monotonic() - started >= 0.45
    assert problem_slug(twin) == "request-in-progress"
    gate.release.set()
    assert first.result().status_code == 201


@pytest.mark.parametrize("backend", ["sqlite-separate", "pg-separate"], indirect=True)
def test_lease_is_renewed_while_the_handler_runs(make_app, backend):
    """Lock timeout 1 s, handler 2.5 s: every twin meanwhile is 409, never a second run."""
    app = make_app(**backend.app_kwargs(), config={"CNERIUM_LOCK_TIMEOUT": 1})
    client = app.test_client()
    slow = {**ORDER, "sleep": 2.5}
    first = Background(lambda: post(client, slow))
    wait_for(lambda: records(app), what="the claim")
    answers = []
    while records(app)[0].state == "in_progress":
        twin = post(client, slow)
        if twin.status_code == 201:  # the first completed between our read and this post
            assert twin.headers["Idempotent-Replayed"] == "true"
            break
        assert problem_slug(twin) == "request-in-progress"
        answers.append(time.monotonic())
        time.sleep(0.1)
    assert first.result().status_code == 201
    assert answers and answers[-1] - answers[0] > 1.2, "no twin was tried past the lease"
    assert orders(app) == 1
    [record] = records(app)
    assert record.state == "completed" and record.status == 201


@pytest.mark.parametrize("first_outcome", ["returns", "raises"])
@pytest.mark.parametrize("backend", ["sqlite-separate", "pg-separate"], indirect=True)
def test_fenced_lease_a_taken_over_handler_cannot_touch_its_successors_record(
        make_app, backend, first_outcome):
    gate = Gate(hold=(1,), fail=(1,) if first_outcome == "raises" else ())
    app = gated_app(make_app, gate, **backend.app_kwargs())
    app.testing = False
    client = app.test_client()
    first = Background(lambda: gated_post(client))
    assert gate.entered.wait(30)

    # The first run is still alive, but its lease has run out (as if it had hung).
    query(backend.records_url, "UPDATE cnerium_idempotency SET lease_expires_at = %s",
          (time.time() - 1,))
    second = gated_post(client)
    assert second.status_code == 201
    assert second.get_json()["call"] == 2
    assert "Idempotent-Replayed" not in second.headers

    gate.release.set()
    late = first.result()
    assert late.status_code == (201 if first_outcome == "returns" else 500)

    [record] = records(app)
    assert record.state == "completed"
    assert bytes(record.body) == second.data
    replay = gated_post(client)
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.data == second.data
    assert gate.calls == 2


def test_stopping_cnerium_ends_the_lease_renewing_thread(app):
    """The thread that renews running handlers' leases ends with the store (no thread, store
    and connection pool left behind by each stop and start)."""
    assert post(app.test_client(), ORDER).status_code == 201  # a claim starts the thread
    thread = app.extensions["cnerium"].store._leases._thread
    assert thread is not None and thread.is_alive()
    app.extensions["cnerium"].stop()
    thread.join(5)
    assert not thread.is_alive()
