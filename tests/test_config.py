"""SPEC §1: config keys and their defaults, AppConfig, init_app and the app factory pattern."""

from __future__ import annotations

import os
import socket

import pytest
from flask import Flask

from flask_cnerium import AppConfig, Cnerium, RealtimeConfig, created
from flask_cnerium.config import Settings
from tests.durable_helpers import ORDER, post, records

# SPEC §1's table: every key, and the literal default of those that have one.
LITERAL_DEFAULTS = {
    "CNERIUM_IDEMPOTENCY_HEADER": "Idempotency-Key",
    "CNERIUM_KEY_MAX_LENGTH": 255,
    "CNERIUM_KEY_TTL": 86400,
    "CNERIUM_LOCK_TIMEOUT": 60,
    "CNERIUM_IN_FLIGHT_WAIT": 0,
    "CNERIUM_MISMATCH_STATUS": 409,
    "CNERIUM_REALTIME_HOST": None,
    "CNERIUM_REALTIME_PORT": None,
    "CNERIUM_REALTIME_BROKER": "memory",
    "CNERIUM_REALTIME_MAX_PAYLOAD": 65536,
    "CNERIUM_REALTIME_QUEUE_SIZE": 1000,
    "CNERIUM_REALTIME_MAX_ROOMS": 100,
    "CNERIUM_REALTIME_MAX_FRAME": 4096,
    "CNERIUM_REALTIME_HISTORY": 1000,
}
COMPUTED = ["CNERIUM_NAME", "CNERIUM_DATA_DIR", "CNERIUM_NODE_ID", "CNERIUM_DATABASE",
            "CNERIUM_REALTIME_ENABLED", "CNERIUM_REALTIME_ENDPOINT"]


def test_init_app_sets_every_key_with_its_default():
    app = Flask("shop")
    Cnerium(app)
    for key, value in LITERAL_DEFAULTS.items():
        assert key in app.config and app.config[key] == value, key
    for key in COMPUTED:
        assert key in app.config, key
    # no key beyond the documented ones
    assert {k for k in app.config if k.startswith("CNERIUM_")} == \
        set(LITERAL_DEFAULTS) | set(COMPUTED)


def test_computed_defaults_resolve_as_documented():
    app = Flask("shop")
    Cnerium(app)
    settings = Settings.from_app(app)
    data_dir = os.path.join(app.instance_path, "cnerium")
    assert settings.name == "shop"
    assert settings.data_dir == data_dir
    assert settings.node_id == f"{socket.gethostname()}-{os.getpid()}"
    assert settings.database_url == "sqlite:///" + os.path.join(data_dir, "cnerium.db")
    assert settings.realtime == RealtimeConfig.disabled()


def test_endpoint_alone_enables_realtime():
    app = Flask("shop")
    app.config["CNERIUM_REALTIME_ENDPOINT"] = "/ws"
    Cnerium(app)
    assert Settings.from_app(app).realtime == RealtimeConfig.enabled("/ws")


def test_app_config_wins_over_defaults():
    app = Flask("shop")
    app.config.update(CNERIUM_KEY_TTL=5, CNERIUM_IDEMPOTENCY_HEADER="X-Request-Key")
    Cnerium(app)
    assert app.config["CNERIUM_KEY_TTL"] == 5
    assert app.config["CNERIUM_IDEMPOTENCY_HEADER"] == "X-Request-Key"


def test_custom_idempotency_header(make_app):
    client = make_app(config={"CNERIUM_IDEMPOTENCY_HEADER": "X-Request-Key"}).test_client()
    assert post(client, ORDER, key="k1").status_code == 400  # Idempotency-Key is not read
    response = post(client, ORDER, key=None, headers={"X-Request-Key": "k1"})
    assert response.get_json()["order_id"] == "ord_k1"


@pytest.mark.parametrize(("key", "value"), [("CNERIUM_MISMATCH_STATUS", 400),
                                            ("CNERIUM_KEY_MAX_LENGTH", 256),
                                            ("CNERIUM_KEY_MAX_LENGTH", 0)])
def test_invalid_values_are_refused_with_the_key_named(key, value):
    app = Flask("shop")
    app.config[key] = value
    with pytest.raises(ValueError, match=key):  # at init_app or, at the latest, at start
        Cnerium(app).start()


# -- AppConfig -------------------------------------------------------------------------


def test_app_config_setters_apply_on_top_of_app_config(tmp_path):
    app = Flask("shop")
    app.config.update(CNERIUM_NAME="from-app-config", CNERIUM_NODE_ID="node-from-config",
                      CNERIUM_KEY_TTL=7)
    config = (AppConfig.production().set_name("orders-api").set_data_dir(tmp_path / "store")
              .set_node_id("node-a"))
    cnerium = Cnerium(app, config)
    assert app.config["CNERIUM_NAME"] == "orders-api"
    assert app.config["CNERIUM_DATA_DIR"] == str(tmp_path / "store")
    assert app.config["CNERIUM_NODE_ID"] == "node-a"
    assert app.config["CNERIUM_KEY_TTL"] == 7  # not set by the object: app.config's value

    @cnerium.durable_post("/orders", "orders.create")
    def create_order(request):
        return created({"ok": True})

    assert post(app.test_client(), ORDER).status_code == 201
    assert os.path.exists(tmp_path / "store" / "cnerium.db")
    store = app.extensions["cnerium"].store
    assert store.node_id == "node-a"
    with store.database.connection_context():
        assert store.model.get().node_id == "node-a"
    store.close()


def test_app_config_presets_and_chaining():
    development, production = AppConfig.development(), AppConfig.production()
    assert (development.environment, production.environment) == ("development", "production")
    assert development.set_name("x") is development
    assert development.enable_realtime() is development
    assert development.disable_realtime() is development
    assert production.set_database("sqlite:////tmp/x.db") is production


def test_app_config_set_database_chooses_the_store(tmp_path):
    url = f"sqlite:///{tmp_path}/elsewhere/store.db"
    app = Flask("shop")
    Cnerium(app, AppConfig().set_name("shop").set_data_dir(str(tmp_path / "data"))
            .set_database(url))
    assert app.config["CNERIUM_DATABASE"] == url
    assert Settings.from_app(app).database_url == url
    assert app.extensions["cnerium"].start(app)
    try:
        assert (tmp_path / "elsewhere" / "store.db").exists()
        assert not (tmp_path / "data" / "cnerium.db").exists()
    finally:
        app.extensions["cnerium"].stop()


def test_app_config_realtime(tmp_path):
    app = Flask("shop")
    Cnerium().init_app(app, AppConfig().enable_realtime("/events", "shop.example", 8443))
    assert Settings.from_app(app).realtime == RealtimeConfig.enabled("/events", "shop.example",
                                                                      8443)
    assert app.config["CNERIUM_REALTIME_ENABLED"] is True

    app = Flask("shop")
    app.config["CNERIUM_REALTIME_ENDPOINT"] = "/ws"
    Cnerium(app, AppConfig().disable_realtime())
    assert Settings.from_app(app).realtime == RealtimeConfig.disabled()


# -- init_app and the app factory -------------------------------------------------------


def test_init_app_twice_raises_a_clear_error():
    app = Flask("shop")
    cnerium = Cnerium(app)
    with pytest.raises(RuntimeError, match="already registered"):
        cnerium.init_app(app)
    with pytest.raises(RuntimeError, match="already registered"):
        Cnerium(app)


def test_start_before_init_app_says_what_to_do():
    with pytest.raises(RuntimeError, match="init_app"):
        Cnerium().start()


def test_app_factory_pattern(tmp_path):
    cnerium = Cnerium()

    @cnerium.durable_post("/orders", "orders.create")
    def create_order(request):
        return created({"app": request.flask_request.host})

    def create_app(name: str) -> Flask:
        app = Flask(name)
        app.config["CNERIUM_DATA_DIR"] = str(tmp_path / name)
        cnerium.init_app(app)
        return app

    first, second = create_app("first"), create_app("second")
    assert not hasattr(cnerium, "app")

    # A route declared after init_app reaches every app too.
    cnerium.durable_post("/refunds", "refunds.create", lambda request: created({}))

    for app in (first, second):
        client = app.test_client()
        assert post(client, ORDER).status_code == 201
        assert post(client, ORDER, path="/refunds", key="r1").status_code == 201
        assert [r.key for r in records(app)] == ["order-123", "r1"]
    # Each app has its own store: one key, one record in each.
    assert first.extensions["cnerium"].store is not second.extensions["cnerium"].store

    with first.app_context():
        assert cnerium.start() is True
    assert cnerium.start() is True
    for app in (first, second):
        app.extensions["cnerium"].store.close()
