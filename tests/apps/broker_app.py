"""The broker test app: realtime at ``/ws`` and ``POST /emit``, configured from the environment.

Served by several processes at once (``tests.apps.serve`` subprocesses or gunicorn workers)
that share one broker. Variables:

- ``CNERIUM_TEST_BROKER``: ``CNERIUM_REALTIME_BROKER``; ``CNERIUM_TEST_NAME``: the service
  name (it namespaces the broker's channel, so each test has its own);
- ``CNERIUM_TEST_DATA_DIR``, and ``CNERIUM_TEST_STORE_URL`` for ``CNERIUM_DATABASE``;
- ``CNERIUM_TEST_START=1`` starts Cnerium in the factory (before gunicorn forks with
  ``--preload``); otherwise the first request or WebSocket starts it;
- ``CNERIUM_TEST_CONNECTIONS``: a file that gets one line, this process's pid, per
  WebSocket connection (which gunicorn worker holds which socket).
"""

from __future__ import annotations

import os

from flask import Flask, request

from flask_cnerium import Cnerium, signals


def create_app_from_env() -> Flask:
    """The broker test app, as the ``CNERIUM_TEST_*`` variables describe it."""
    e = os.environ
    app = Flask(__name__)
    app.config.update(CNERIUM_NAME=e["CNERIUM_TEST_NAME"], CNERIUM_REALTIME_ENDPOINT="/ws",
                      CNERIUM_REALTIME_BROKER=e["CNERIUM_TEST_BROKER"],
                      CNERIUM_DATA_DIR=e["CNERIUM_TEST_DATA_DIR"])
    if e.get("CNERIUM_TEST_STORE_URL"):
        app.config["CNERIUM_DATABASE"] = e["CNERIUM_TEST_STORE_URL"]
    cnerium = Cnerium(app)

    @app.post("/emit")
    def emit() -> dict:
        body = request.get_json()
        room, event_type, payload = body.get("room"), body["type"], body.get("payload", {})
        cnerium.start()
        emitted = (cnerium.emit_to(room, event_type, payload) if room
                   else cnerium.emit(event_type, payload))
        return {"emitted": emitted, "pid": os.getpid()}

    @app.get("/health")
    def health() -> dict:
        return {"ok": True, "pid": os.getpid()}

    connections = e.get("CNERIUM_TEST_CONNECTIONS")
    if connections:
        def record(sender: Flask, **_: object) -> None:
            with open(connections, "a") as f:
                f.write(f"{os.getpid()}\n")

        signals.client_connected.connect(record, app, weak=False)
    if e.get("CNERIUM_TEST_START") == "1":
        cnerium.start()
    return app
