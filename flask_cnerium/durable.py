"""Durable POST routes: ``durable_post``'s view, DurableRequest, DurableResponse, fingerprints."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

from flask import Request, Response, current_app, request
from werkzeug.datastructures import Headers

from . import signals
from .errors import (
    IdempotencyKeyInvalid,
    IdempotencyKeyMissing,
    IdempotencyKeyReused,
    InvalidBody,
    ProblemError,
    RequestInProgress,
    StoreError,
    StoreUnavailable,
    StreamedResponseError,
)
from .problems import PROBLEM_MEDIA_TYPE, problem_body, problem_json
from .realtime import HeldEvents
from .store import Fingerprint, Outcome, StoredResponse, Verdict

if TYPE_CHECKING:
    from .extension import Cnerium, CneriumState

log = logging.getLogger("flask_cnerium")

REPLAY_HEADER = "Idempotent-Replayed"
RETRY_AFTER = 1
"""Seconds a client is told to wait after a 409 in-progress or a 503."""


class DurableRequest:
    """What a durable handler sees of its request.

    Attributes: ``idempotency_key`` (the parsed key), ``operation`` (the route's operation
    name), ``view_args`` (the URL variables) and ``flask_request`` (the Flask request).
    """

    def __init__(self, flask_request: Request, key: str, operation: str,
                 view_args: Mapping[str, Any]) -> None:
        self.flask_request = flask_request
        self.idempotency_key = key
        self.operation = operation
        self.view_args = dict(view_args)
        self._json: dict | None = None

    @property
    def body(self) -> bytes:
        """The raw request body."""
        return self.flask_request.get_data(cache=True)

    @property
    def headers(self) -> Headers:
        """The request headers."""
        return self.flask_request.headers

    def idempotency_key_value(self) -> str:
        """The idempotency key (unquoted when it was sent as an RFC 8941 string)."""
        return self.idempotency_key

    def json(self) -> dict[str, Any]:
        """The body as a JSON object; anything else raises a 400 ``invalid-body`` problem."""
        if self._json is None:
            try:
                value = json.loads(self.body)
            except (ValueError, UnicodeDecodeError) as exc:
                raise InvalidBody(f"The request body is not valid JSON: {exc}.") from None
            if not isinstance(value, dict):
                raise InvalidBody("The request body must be a JSON object, not %s."
                                  % type(value).__name__)
            self._json = value
        return self._json


class DurableResponse:
    """A durable handler's response: status, body (JSON-able, str or bytes) and headers.

    ``media_type`` overrides the Content-Type (JSON bodies default to ``application/json``,
    ``str`` to ``text/plain``, ``bytes`` to ``application/octet-stream``).
    """

    def __init__(self, status: int, body: Any = None, headers: Mapping[str, str] | None = None,
                 *, media_type: str | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = dict(headers or {})
        self.media_type = media_type

    def to_response(self) -> Response:
        """The Flask response this stands for."""
        body = self.body
        if isinstance(body, str | bytes):
            media = "text/plain" if isinstance(body, str) else "application/octet-stream"
            response = Response(body, mimetype=self.media_type or media)
        elif body is None:
            response = Response(b"", mimetype=self.media_type)
        else:
            response = current_app.json.response(body)
            if self.media_type:
                response.mimetype = self.media_type
        response.status_code = self.status
        response.headers.update(self.headers)
        return response

    @classmethod
    def ok(cls, body: Any) -> DurableResponse:
        """200 OK with ``body``."""
        return cls(200, body)

    @classmethod
    def created(cls, body: Any) -> DurableResponse:
        """201 Created with ``body``."""
        return cls(201, body)

    @classmethod
    def accepted(cls, body: Any) -> DurableResponse:
        """202 Accepted with ``body``: the work was queued, not done."""
        return cls(202, body)

    @classmethod
    def problem(cls, status: int, detail: str, type: str = "about:blank") -> DurableResponse:
        """An RFC 9457 problem response, stored and replayed like any other."""
        return cls(status, problem_json(problem_body(status, detail, type)),
                   media_type=PROBLEM_MEDIA_TYPE)

    @classmethod
    def bad_request(cls, detail: str) -> DurableResponse:
        """400 Bad Request as a problem document."""
        return cls.problem(400, detail)

    @classmethod
    def not_found(cls, detail: str) -> DurableResponse:
        """404 Not Found as a problem document."""
        return cls.problem(404, detail)

    @classmethod
    def conflict(cls, detail: str) -> DurableResponse:
        """409 Conflict as a problem document."""
        return cls.problem(409, detail)

    @classmethod
    def unprocessable(cls, detail: str) -> DurableResponse:
        """422 Unprocessable Content as a problem document."""
        return cls.problem(422, detail)


def created(body: Any) -> DurableResponse:
    """201 Created: the seed's ``cnerium::created``."""
    return DurableResponse.created(body)


def parse_key(value: str | None, max_length: int) -> str:
    """The idempotency key from its header value, or a 400 problem saying what is wrong."""
    if value is None:
        raise IdempotencyKeyMissing("Send an idempotency key header with every request to "
                                    "this route, e.g. a UUID generated by the client.")
    key = value.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = _unquote_sf_string(key[1:-1])
    if not key:
        raise IdempotencyKeyInvalid("The idempotency key is empty.")
    if len(key) > max_length:
        raise IdempotencyKeyInvalid(f"The idempotency key is longer than {max_length} "
                                    "characters.")
    if not (key.isascii() and key.isprintable()) or " " in key:  # "!" to "~" only
        raise IdempotencyKeyInvalid("The idempotency key must be visible ASCII characters "
                                    "(no spaces or control characters).")
    return key


def _unquote_sf_string(inner: str) -> str:
    """RFC 8941 string content: ``\\"`` and ``\\\\`` are the only escapes."""
    out, chars = [], iter(inner)
    for c in chars:
        if c == "\\":
            c = next(chars, "")
            if c not in ('"', "\\"):
                raise IdempotencyKeyInvalid("The quoted idempotency key has a bad escape.")
        elif c == '"':
            raise IdempotencyKeyInvalid("The quoted idempotency key has an unescaped quote.")
        out.append(c)
    return "".join(out)


def fingerprint(operation: str, req: Request) -> Fingerprint:
    """Hash what makes two requests the same: operation, method, path, media type, body."""
    environ = req.environ  # read directly: this runs on every request, replays included
    media_type = environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
    query = environ.get("QUERY_STRING", "")
    target = req.path + ("?" + query if query else "")
    head = f"{operation}\n{req.method}\n{target}\n{media_type}\n".encode()
    body = req.get_data(cache=True)
    raw = hashlib.sha256(head + body).hexdigest()
    return Fingerprint(raw, lambda: hashlib.sha256(
        head + canonical_body(media_type, body)).hexdigest())


_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
"""Made once: ``json.dumps`` with these options builds a new encoder on every call."""


def canonical_body(media_type: str, body: bytes) -> bytes:
    """JSON as sorted compact JSON, forms as sorted fields, anything else as its bytes."""
    try:
        if media_type == "application/json" or media_type.endswith("+json"):
            return _CANONICAL_JSON.encode(json.loads(body)).encode()
        if media_type == "application/x-www-form-urlencoded":
            return urlencode(sorted(parse_qsl(body.decode(), keep_blank_values=True))).encode()
    except ValueError:
        pass
    return body


def to_response(rv: Any) -> Response:
    """The Flask response for whatever the handler returned; streamed ones are refused."""
    response = rv.to_response() if isinstance(rv, DurableResponse) else \
        current_app.make_response(rv)
    if response.is_streamed:
        raise StreamedResponseError(
            "A durable handler returned a streamed response, which cannot be stored and "
            "replayed. Return the whole body (a dict, str, bytes or DurableResponse).")
    return response


def to_stored(response: Response) -> StoredResponse:
    """Status, headers and body bytes of ``response``, as the store keeps them."""
    headers = [(k, v) for k, v in response.headers.items() if k.lower() != "content-length"]
    return StoredResponse(response.status_code, headers, response.get_data())


def replay(stored: StoredResponse) -> Response:
    """The stored response, byte for byte, marked ``Idempotent-Replayed: true``."""
    response = Response(stored.body, status=stored.status, headers=stored.headers)
    response.headers[REPLAY_HEADER] = "true"
    return response


def make_view(cnerium: Cnerium, operation: str, handler: Callable[..., Any]) -> Callable:
    """The Flask view that wraps ``handler`` in the idempotency protocol."""

    @functools.wraps(handler)
    def view(**view_args: Any) -> Response:
        app = current_app._get_current_object()
        state: CneriumState = app.extensions["cnerium"]
        try:
            return _handle(app, state, cnerium, operation, handler, view_args)
        except ProblemError as exc:
            if isinstance(exc, IdempotencyKeyMissing | IdempotencyKeyInvalid | StoreUnavailable):
                signals.durable_rejected.send(app, operation=operation, reason=exc.slug)
            raise

    return view


def _handle(app, state, cnerium, operation, handler, view_args) -> Response:
    try:
        settings = state.ensure_started(app)
    except StoreError as exc:
        raise _store_unavailable(exc) from None
    flask_request = request._get_current_object()
    key = parse_key(flask_request.environ.get(settings.idempotency_environ_key),
                    settings.key_max_length)
    scope = cnerium.current_scope()
    held: list = []
    made: list[Response] = []  # the handler's own response, sent as is when it ran

    def run() -> StoredResponse:
        durable_request = DurableRequest(flask_request, key, operation, view_args)
        with HeldEvents(app, held):
            made.append(to_response(handler(durable_request, **view_args)))
        return to_stored(made[0])

    try:
        outcome = state.store.execute(scope, key, operation,
                                      fingerprint(operation, flask_request), run,
                                      lambda: state.publish_held(app, held, scope, key))
    except StoreError as exc:
        raise _store_unavailable(exc) from None
    return _answer(app, settings, operation, scope, key, outcome, made)


def _store_unavailable(exc: StoreError) -> StoreUnavailable:
    log.warning("Idempotency store unavailable: %s", exc)
    return StoreUnavailable("The idempotency store is unavailable; retry later.",
                            retry_after=RETRY_AFTER)


def _answer(app, settings, operation: str, scope: str, key: str, outcome: Outcome,
            made: list[Response]) -> Response:
    # Signals are sent only when something listens: most apps connect none, and building
    # their arguments on every replay costs more than the replay's own lookup.
    verdict = outcome.verdict
    if verdict is Verdict.REPLAYED:
        if signals.durable_replayed.receivers:
            signals.durable_replayed.send(app, operation=operation, key=key, scope=scope,
                                          status=outcome.response.status)
        return replay(outcome.response)
    if verdict is Verdict.EXECUTED:
        if signals.durable_executed.receivers:
            signals.durable_executed.send(app, operation=operation, key=key, scope=scope,
                                          status=outcome.response.status)
        return made[0]
    signals.durable_conflict.send(app, operation=operation, key=key, scope=scope,
                                  reason=verdict.value)
    if verdict is Verdict.MISMATCH:
        raise IdempotencyKeyReused(
            "This idempotency key was already used with another request (body, operation or "
            "path). Use a new key for a new request.", status=settings.mismatch_status)
    raise RequestInProgress("A request with this idempotency key is still being handled; "
                            "retry after it completes.", retry_after=RETRY_AFTER)
