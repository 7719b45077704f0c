"""The ``Cnerium`` extension: ``init_app``, ``start``, per-app state and route wiring."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import threading
import weakref
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import peewee
from flask import Flask, current_app, has_app_context

from .cli import cnerium_cli
from .client import register_client
from .config import (
    DEFAULTS,
    KEY_COLUMN_LENGTH,
    AppConfig,
    Settings,
    default_node_id,
    realtime_config_keys,
)
from .durable import make_view
from .errors import StoreError
from .events import Event, EventPayload, PublishedEvent, RealtimeConfig, check_room
from .forking import in_forked_children
from .realtime import capture_events, emit, start_hub
from .store import Store, open_database, redact_url
from .websocket import add_endpoint

log = logging.getLogger("flask_cnerium")


class CneriumState:
    """Everything Cnerium keeps for one app, under ``app.extensions["cnerium"]``."""

    def __init__(self, extension: Cnerium, database: peewee.Database | None) -> None:
        self.extension = extension
        self.database = database
        self.settings: Settings | None = None
        self.store: Store | None = None
        self.realtime: Any = None
        self._lock = threading.Lock()
        in_forked_children(self._after_fork)

    def _after_fork(self) -> None:
        """A worker forked after start (gunicorn ``--preload``) gets its own default node id."""
        self._lock = threading.Lock()
        settings = self.settings
        if settings is None or settings.node_id != default_node_id(os.getppid()):
            return  # not started yet, or the node id was configured
        self.settings = dataclasses.replace(settings, node_id=default_node_id())
        self.store.node_id = self.settings.node_id
        if self.realtime is not None:
            self.realtime.use_settings(self.settings)

    def start(self, app: Flask) -> bool:
        """Open the store (creating its table) and start realtime; ``False`` if storage fails."""
        with self._lock:
            if self.store is not None:
                return True
            settings = Settings.from_app(app)
            try:
                store = self._open_store(settings)
                store.create_tables()
            except StoreError as exc:
                where = "(shared database)" if self.database else \
                    redact_url(settings.database_url)
                log.error("Cnerium could not open its store %s: %s", where, exc)
                return False
            try:
                self.realtime = start_hub(settings, store.database)
            except Exception:  # a broker that cannot work here (e.g. NOTIFY on SQLite)
                store.close()
                raise
            self.settings, self.store = settings, store
            log.info("Cnerium started for %s (node %s).", settings.name, settings.node_id)
            return True

    def stop(self) -> None:
        """Stop realtime (its broker's listener) and close the store; ``start`` may follow."""
        with self._lock:
            if self.realtime is not None:
                self.realtime.stop()
            if self.store is not None:
                self.store.close()
            self.settings = self.store = self.realtime = None

    def _open_store(self, settings: Settings) -> Store:
        shared = self.database is not None
        database = self.database if shared else open_database(settings.database_url)
        return Store(database, shared=shared, node_id=settings.node_id,
                     ttl=settings.key_ttl, lock_timeout=settings.lock_timeout,
                     in_flight_wait=settings.in_flight_wait,
                     reopen=None if shared else lambda: open_database(settings.database_url))

    def ensure_started(self, app: Flask) -> Settings:
        """The settings, starting Cnerium first if nothing has yet; 503 when storage fails."""
        if self.store is None and not self.start(app):
            raise StoreError("The store could not be opened.")
        return self.settings

    def publish_held(self, app: Flask, held: list, scope: str, key: str) -> None:
        """Publish the events a durable handler emitted, now that its response is stored."""
        if held and self.realtime is not None:
            self.realtime.publish_held(app, held, scope, key)


class Cnerium:
    """Durable, retry-safe POST routes and realtime events for a Flask app.

    ``Cnerium(app)`` or ``Cnerium()`` then ``init_app(app)``. Pass ``database=`` (a peewee
    ``Database``) to keep the idempotency records in the app's own database, so that a
    handler's writes and its stored response commit together.
    """

    def __init__(self, app: Flask | None = None, config: AppConfig | None = None, *,
                 database: peewee.Database | None = None) -> None:
        self._config = config
        self._database = database
        self._routes: list[tuple[str, str, Callable, dict]] = []
        self._apps: weakref.WeakSet[Flask] = weakref.WeakSet()
        self._scope_function: Callable[[], Any] | None = None
        self._realtime: RealtimeConfig | None = None
        self._room_authorizer: Callable[[str], bool] | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, config: AppConfig | None = None, *,
                 database: peewee.Database | None = None) -> None:
        """Register Cnerium on ``app``: config defaults, state and the durable routes."""
        if "cnerium" in app.extensions:
            raise RuntimeError("A 'Cnerium' instance is already registered on this Flask app. "
                               "Import and use that instance instead of creating another.")
        for key, value in DEFAULTS.items():
            app.config.setdefault(key, value)
        config = config or self._config
        if config is not None:
            config.apply(app.config)
        if self._realtime is not None:
            app.config.update(realtime_config_keys(self._realtime))
        app.extensions["cnerium"] = CneriumState(self, database or self._database)
        self._apps.add(app)
        self._serve_realtime(app)
        register_client(app)
        app.cli.add_command(cnerium_cli)
        for rule, operation, handler, options in self._routes:
            self._add_route(app, rule, operation, handler, options)

    def start(self) -> bool:
        """Prepare storage and realtime for the current app (or every registered app).

        Idempotent. Returns ``False``, and logs why, when storage cannot be opened.
        """
        return all(app.extensions["cnerium"].start(app) for app in self._target_apps())

    def _target_apps(self) -> list[Flask]:
        if has_app_context() and "cnerium" in current_app.extensions:
            return [current_app._get_current_object()]
        apps = list(self._apps)
        if not apps:
            raise RuntimeError("Cnerium is not registered on any app: call init_app(app) first.")
        return apps

    # -- durable routes ------------------------------------------------------------------

    def durable_post(self, rule: str, operation: str, handler: Callable | None = None,
                     **options: Any) -> Callable:
        """Register ``handler`` as a durable POST route: it runs once per idempotency key.

        Use as a decorator (``@cnerium.durable_post("/orders", "orders.create")``) or call
        with the handler. URL variables reach the handler as keyword arguments after the
        ``DurableRequest``. ``options`` go to ``app.add_url_rule``.
        """
        def register(function: Callable) -> Callable:
            self._routes.append((rule, operation, function, options))
            for app in self._apps:
                self._add_route(app, rule, operation, function, options)
            return function

        return register if handler is None else register(handler)

    def _add_route(self, app: Flask, rule: str, operation: str, handler: Callable,
                   options: dict) -> None:
        options = dict(options)
        name = handler.__name__
        options.setdefault("endpoint", name if name.isidentifier() else operation)
        app.add_url_rule(rule, view_func=make_view(self, operation, handler), methods=["POST"],
                         **options)

    def key_scope(self, function: Callable[[], Any]) -> Callable[[], Any]:
        """Register the function that returns the current request's key scope (e.g. user id).

        Keys are looked up by ``(scope, key)``, so one scope never sees another's records.
        """
        self._scope_function = function
        return function

    def current_scope(self) -> str:
        """The key scope of the current request: ``""`` (global) unless ``key_scope`` says."""
        if self._scope_function is None:
            return ""
        scope = self._scope_function()
        if scope is None:
            return ""
        scope = str(scope)
        if len(scope) > KEY_COLUMN_LENGTH:  # a digest keeps long scopes apart
            scope = "sha256:" + hashlib.sha256(scope.encode()).hexdigest()
        return scope

    # -- realtime events -----------------------------------------------------------------

    def emit(self, event_or_type: Event | str, payload: EventPayload | None = None) -> bool:
        """Publish an event to every connected client (after the commit in a durable handler).

        ``True`` when realtime accepted it; ``False`` when realtime is disabled, not started
        or its broker failed. An invalid type or payload raises ``ValueError``.
        """
        return emit(self._emitting_app(), None, event_or_type, payload)

    def emit_to(self, room: str, event_or_type: Event | str,
                payload: EventPayload | None = None) -> bool:
        """Publish an event to the clients in ``room``; see ``emit``.

        An invalid room (not 1-128 characters of ``[A-Za-z0-9_.:-]``) raises ``ValueError``.
        """
        return emit(self._emitting_app(), check_room(room), event_or_type, payload)

    def _emitting_app(self) -> Flask:
        state = current_app.extensions.get("cnerium") if has_app_context() else None
        if state is not None and state.extension is self:
            return current_app._get_current_object()
        apps = list(self._apps)
        if len(apps) != 1:
            raise RuntimeError("Cnerium does not know which app to emit for: it is registered "
                               f"on {len(apps)} apps. Emit inside an app context "
                               "(with app.app_context(): ...).")
        return apps[0]

    def realtime(self, endpoint: str = "/ws", host: str = "0.0.0.0",
                 port: int | None = None) -> None:
        """Serve realtime events at ``endpoint``; ``host``/``port`` are what clients are told.

        The seed's form of ``AppConfig.enable_realtime``; call it before ``start()``.
        """
        self._realtime = RealtimeConfig.enabled(endpoint, host, port)
        for app in self._apps:
            if app.extensions["cnerium"].store is not None:
                raise RuntimeError("Cnerium has already started for this app: call "
                                   "cnerium.realtime(...) before cnerium.start().")
            app.config.update(realtime_config_keys(self._realtime))
            self._serve_realtime(app)

    def _serve_realtime(self, app: Flask) -> None:
        realtime = Settings.from_app(app).realtime
        if realtime.enabled:
            add_endpoint(app, realtime.endpoint)

    def authorize_room(self, function: Callable[[str], bool]) -> Callable[[str], bool]:
        """Register ``function(room) -> bool``, asked inside the WebSocket request's context
        whether the client may join ``room``. Without one, every room is open."""
        self._room_authorizer = function
        return function

    def room_allowed(self, room: str) -> bool:
        """Whether the current WebSocket request may join ``room``."""
        return self._room_authorizer is None or bool(self._room_authorizer(room))

    def capture_events(self) -> AbstractContextManager[list[PublishedEvent]]:
        """A context manager yielding a list that fills with the events as they are published
        (each with ``.type``, ``.payload``, ``.room``, ``.id``), for tests."""
        return capture_events(self._apps)
