"""``flask cnerium init | purge | stats | show`` against records made by real durable POSTs."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest
from click.testing import CliRunner
from flask import Flask, request
from flask.cli import FlaskGroup

from flask_cnerium import Cnerium, created
from flask_cnerium import cli as cli_module
from flask_cnerium.cli import cnerium_cli
from flask_cnerium.store import Store

_apps: list[Flask] = []


@pytest.fixture(autouse=True)
def _close_stores():
    """Hand back the pooled connections of every app a test built."""
    yield
    while _apps:
        state = _apps.pop().extensions["cnerium"]
        if state.store is not None:
            state.store.close()


def cli_app(instance_path, **config) -> Flask:
    """An app with three durable routes: JSON, binary, and one that waits for a signal."""
    app = Flask(__name__, instance_path=str(instance_path))
    _apps.append(app)
    app.config.update(config)
    cnerium = Cnerium(app)
    app.extensions["test.release"] = release = threading.Event()
    app.extensions["test.entered"] = entered = threading.Event()

    @cnerium.key_scope
    def user():
        return request.headers.get("X-User")

    @cnerium.durable_post("/orders", "orders.create")
    def create_order(req):
        return created({"order_id": "ord_" + req.idempotency_key_value(), **req.json()})

    @cnerium.durable_post("/blobs", "blobs.store")
    def store_blob(req):
        return b"\x00\xff\xfe binary", 201, {"Content-Type": "application/octet-stream"}

    @cnerium.durable_post("/slow", "slow.run")
    def slow(req):
        entered.set()
        release.wait(10)
        return created({"ok": True})

    return app


@pytest.fixture
def app(tmp_path):
    """A CLI test app whose store is its own SQLite file under ``tmp_path``."""
    return cli_app(tmp_path)


def post(app: Flask, key: str, path: str = "/orders", user: str | None = None):
    headers = {"Idempotency-Key": key, **({"X-User": user} if user else {})}
    response = app.test_client().post(path, json={"product_id": "p1"}, headers=headers)
    assert response.status_code == 201, response.data
    return response


def run(app: Flask, *args: str):
    return app.test_cli_runner().invoke(cnerium_cli, list(args))


def row_count(app: Flask) -> int:
    path = app.extensions["cnerium"].store.database.database
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT COUNT(*) FROM cnerium_idempotency").fetchone()[0]


def test_init_creates_the_table_and_says_where(app, tmp_path):
    result = run(app, "init")
    assert result.exit_code == 0, result.output
    path = tmp_path / "cnerium" / "cnerium.db"
    assert "table cnerium_idempotency" in result.output
    assert f"sqlite:///{path}" in result.output
    assert row_count(app) == 0


def test_purge_removes_expired_records_in_batches(tmp_path, monkeypatch):
    short = cli_app(tmp_path, CNERIUM_KEY_TTL=0.2)
    kept = cli_app(tmp_path)
    client = short.test_client()
    for i in range(2500):
        client.post("/orders", json={"i": i}, headers={"Idempotency-Key": f"old-{i}"})
    for i in range(3):
        post(kept, f"new-{i}")
    time.sleep(0.25)
    assert "(expired)" in run(kept, "show", "old-2499").output
    batches: list[int] = []
    purge = Store.purge

    def spy(self, batch_size=1000, pause=0.005):
        for removed in purge(self, batch_size, pause):
            batches.append(removed)
            yield removed

    monkeypatch.setattr(Store, "purge", spy)
    result = run(kept, "purge", "--batch-size", "1000")
    assert result.exit_code == 0, result.output
    assert batches == [1000, 1000, 500]
    assert result.output.startswith("purged 2500 expired records in 3 batches (")
    assert row_count(kept) == 3
    assert run(kept, "show", "old-0").exit_code == 1
    assert "(not expired)" in run(kept, "show", "new-2").output


def test_purge_with_nothing_expired(app):
    post(app, "fresh")
    result = run(app, "purge")
    assert result.exit_code == 0
    assert result.output.startswith("purged 0 expired records in 0 batches (")
    assert row_count(app) == 1


def test_purge_draws_a_progress_bar_on_a_terminal(tmp_path, monkeypatch):
    app = cli_app(tmp_path, CNERIUM_KEY_TTL=0.05)
    for i in range(5):
        post(app, f"k{i}")
    time.sleep(0.1)
    monkeypatch.setattr(cli_module, "_is_terminal", lambda: True)
    result = run(app, "purge", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    assert "Purging expired records" in result.output
    assert "purged 5 expired records in 3 batches" in result.output


def test_purge_rejects_a_batch_size_below_one(app):
    result = run(app, "purge", "--batch-size", "0")
    assert result.exit_code == 2
    assert "--batch-size" in result.output


def test_stats_counts_records_by_operation_and_state(app):
    post(app, "a")
    post(app, "b")
    post(app, "c", "/blobs")
    waiting = threading.Thread(target=post, args=(app, "s", "/slow"))
    waiting.start()
    try:
        assert app.extensions["test.entered"].wait(5)
        result = run(app, "stats")
        show = run(app, "show", "s")
    finally:
        app.extensions["test.release"].set()
        waiting.join(5)
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.output.splitlines()]
    assert ["operation", "state", "records", "expired"] in lines
    assert ["blobs.store", "completed", "1", "0"] in lines
    assert ["orders.create", "completed", "2", "0"] in lines
    assert ["slow.run", "in_progress", "1", "0"] in lines
    assert ["total", "4", "0"] in lines
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert f"oldest: {today}T" in result.output
    assert f"newest: {today}T" in result.output
    assert "KiB (SQLite file" in result.output
    assert "state:      in_progress" in show.output
    assert "(held)" in show.output
    assert "response:" not in show.output


def test_show_prints_the_stored_response(app):
    stored = post(app, "order-123")
    result = run(app, "show", "order-123")
    assert result.exit_code == 0, result.output
    assert "operation:  orders.create" in result.output
    assert "state:      completed" in result.output
    assert "(not expired)" in result.output
    assert "  status:   201" in result.output
    assert "    Content-Type: application/json" in result.output
    assert f"text):\n{stored.get_data(as_text=True)}" in result.output


def test_show_prints_a_binary_body_as_base64(app):
    post(app, "blob", "/blobs")
    result = run(app, "show", "blob")
    assert result.exit_code == 0, result.output
    assert "body (10 bytes, base64):\nAP/+IGJpbmFyeQ==" in result.output


def test_show_finds_a_key_only_in_its_scope(app):
    post(app, "k1", user="alice")
    missing = run(app, "show", "k1")
    assert missing.exit_code == 1
    assert "No record for key 'k1' in the global scope." in missing.output
    found = run(app, "show", "k1", "--scope", "alice")
    assert found.exit_code == 0, found.output
    assert "scope:      scope 'alice'" in found.output
    assert run(app, "show", "k1", "--scope", "bob").exit_code == 1


@pytest.mark.postgres
def test_stats_and_show_on_postgresql(tmp_path, pg_url):
    app = cli_app(tmp_path, CNERIUM_DATABASE=pg_url)
    post(app, "pg-1")
    post(app, "pg-2", "/blobs")
    result = run(app, "stats")
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.output.splitlines()]
    assert ["orders.create", "completed", "1", "0"] in lines
    assert ["total", "2", "0"] in lines
    assert "(pg_total_relation_size of cnerium_idempotency)" in result.output
    assert "AP/+IGJpbmFyeQ==" in run(app, "show", "pg-2").output


def test_an_unreachable_store_is_a_clear_error(tmp_path):
    url = "postgresql://cnerium:s3cret@127.0.0.1:1/nowhere"
    app = cli_app(tmp_path, CNERIUM_DATABASE=url)
    result = run(app, "stats")
    assert result.exit_code == 1
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert error == ["Error: Could not open the Cnerium store "
                     "(postgresql://cnerium:***@127.0.0.1:1/nowhere). Check CNERIUM_DATABASE / "
                     "CNERIUM_DATA_DIR and that the database is reachable."]
    assert "Traceback" not in result.output


def test_an_unusable_data_dir_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    app = cli_app(tmp_path, CNERIUM_DATA_DIR=str(tmp_path / "file" / "cnerium"))
    result = run(app, "init")
    assert result.exit_code == 1
    assert "\nError: Could not open the Cnerium store (sqlite:///" in "\n" + result.output
    assert "Traceback" not in result.output


def test_an_app_without_cnerium_is_told_so(tmp_path):
    app = Flask(__name__, instance_path=str(tmp_path))
    result = run(app, "stats")
    assert result.exit_code == 1
    assert "Cnerium is not registered on this app" in result.output


def test_the_group_is_published_to_the_flask_command(app):
    post(app, "x")
    flask_cli = FlaskGroup(create_app=lambda: app, load_dotenv=False)
    result = CliRunner().invoke(flask_cli, ["cnerium", "show", "x"])
    assert result.exit_code == 0, result.output
    assert "operation:  orders.create" in result.output
