"""start(), lazy start, and the 503 ``store-unavailable`` row: the handler never runs."""

from __future__ import annotations

import fcntl
import logging
import os

import psycopg2
import pytest

from flask_cnerium import store as store_module
from tests.conftest import PG_ADMIN_URL
from tests.durable_helpers import ORDER, dead_pg_url, orders, post, problem_slug


def unusable_stores(tmp_path) -> dict[str, dict]:
    """Config that points the store at something that cannot be opened."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    (tmp_path / "a-directory.db").mkdir()
    return {
        "dead-postgresql": {"CNERIUM_DATABASE": dead_pg_url()},
        "data-dir-under-a-file": {"CNERIUM_DATA_DIR": str(blocker / "cnerium")},
        "database-is-a-directory": {"CNERIUM_DATABASE": f"sqlite:///{tmp_path}/a-directory.db"},
        "unsupported-url": {"CNERIUM_DATABASE": "mysql://nobody@127.0.0.1/x"},
    }


CASES = ["dead-postgresql", "data-dir-under-a-file", "database-is-a-directory",
         "unsupported-url"]


def assert_503(response) -> None:
    assert response.status_code == 503
    assert problem_slug(response) == "store-unavailable"
    assert response.headers["Retry-After"].isdigit()


# -- start() -----------------------------------------------------------------------------


def test_start_returns_true_and_is_idempotent(app):
    cnerium = app.extensions["cnerium"].extension
    assert cnerium.start() is True
    store = app.extensions["cnerium"].store
    assert store is not None
    with app.app_context():
        assert cnerium.start() is True
    assert app.extensions["cnerium"].store is store
    assert os.path.exists(os.path.join(app.config["CNERIUM_DATA_DIR"], "cnerium.db"))


@pytest.mark.parametrize("case", CASES)
def test_start_returns_false_without_raising_when_storage_cannot_be_opened(
        make_app, tmp_path, caplog, case):
    app = make_app(config=unusable_stores(tmp_path)[case])
    with caplog.at_level(logging.ERROR, logger="flask_cnerium"):
        assert app.extensions["cnerium"].extension.start() is False
    assert "could not open its store" in caplog.text
    assert app.extensions["cnerium"].store is None


def test_a_durable_request_before_start_starts_lazily(app, client):
    assert app.extensions["cnerium"].store is None
    assert post(client, ORDER).status_code == 201
    assert app.extensions["cnerium"].store is not None
    assert app.extensions["cnerium"].extension.start() is True
    assert post(client, ORDER).headers["Idempotent-Replayed"] == "true"


# -- 503 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_unreachable_store_is_503_and_the_handler_does_not_run(make_app, tmp_path, case):
    app = make_app(config=unusable_stores(tmp_path)[case])
    client = app.test_client()
    assert_503(post(client, ORDER))
    assert_503(post(client, ORDER))
    assert orders(app) == 0


@pytest.mark.postgres
def test_store_lost_after_start_is_503_and_the_handler_does_not_run(make_app, pg_url):
    app = make_app(store_url=pg_url)
    client = app.test_client()
    assert post(client, ORDER, key="before").status_code == 201
    admin = psycopg2.connect(PG_ADMIN_URL)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE {pg_url.rsplit('/', 1)[1]} WITH (FORCE)")
    admin.close()
    for _ in range(3):  # a dead pooled connection first, then no connection at all
        assert_503(post(client, ORDER, key="after"))
    assert orders(app) == 1
    # A completed record never changes until it expires: the process cache still answers it.
    replay = post(client, ORDER, key="before")
    assert replay.status_code == 201
    assert replay.headers["Idempotent-Replayed"] == "true"


@pytest.mark.parametrize("mode", ["separate", "shared"])
def test_sqlite_locked_past_the_timeout_is_503(make_app, monkeypatch, mode):
    app = make_app(mode=mode)
    client = app.test_client()
    assert post(client, ORDER, key="warm-up").status_code == 201
    store = app.extensions["cnerium"].store
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT", 0.3)
    fd = os.open(store.database.database + ".cnerium-lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another process's writer holds the lock
        assert_503(post(client, ORDER))
    finally:
        os.close(fd)
    assert orders(app) == 1
    assert post(client, ORDER).status_code == 201
    assert orders(app) == 2
