"""Exception classes raised or answered by flask-cnerium.

HTTP errors subclass werkzeug's, so Flask answers them on its own; their response is an
RFC 9457 problem document whose ``type`` ends with the slug named on the class.
"""

from __future__ import annotations

from werkzeug import exceptions

from .problems import problem_response, problem_type


class CneriumError(Exception):
    """Base class of every error raised by flask-cnerium."""


class StoreError(CneriumError):
    """The idempotency store could not be opened or used."""


class StreamedResponseError(CneriumError, TypeError):
    """A durable handler returned a streamed response, which cannot be stored and replayed."""


class ProblemError(exceptions.HTTPException):
    """An HTTP error answered as ``application/problem+json``.

    ``detail`` is the problem's ``detail``; ``status`` overrides the class's code (e.g. 422
    for ``CNERIUM_MISMATCH_STATUS``); ``retry_after`` adds a ``Retry-After`` header.
    """

    slug = "about:blank"
    """The last path segment of the problem ``type`` URI: the docs page explaining it."""
    title: str | None = None
    """The problem's ``title``; ``None`` means the status phrase."""

    def __init__(self, detail: str, *, status: int | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(description=detail)
        if status is not None:
            self.code = status
        self.retry_after = retry_after

    def get_response(self, environ=None, scope=None):
        """The problem document as a response, with ``Retry-After`` when one was given."""
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after else None
        return problem_response(self.code, self.description, problem_type(self.slug),
                                self.title, headers)


class IdempotencyKeyMissing(ProblemError):
    """The request carried no idempotency key: 400 ``idempotency-key-missing``."""

    code = 400
    slug = "idempotency-key-missing"
    title = "Idempotency key missing"


class IdempotencyKeyInvalid(ProblemError):
    """The idempotency key is empty, too long, or not visible ASCII: 400
    ``idempotency-key-invalid``."""

    code = 400
    slug = "idempotency-key-invalid"
    title = "Idempotency key invalid"


class IdempotencyKeyReused(ProblemError):
    """The key was already used with another request (body, operation, method, path or media
    type): 409, or ``CNERIUM_MISMATCH_STATUS``, ``idempotency-key-reused``."""

    code = 409
    slug = "idempotency-key-reused"
    title = "Idempotency key reused"


class RequestInProgress(ProblemError):
    """A request with the same key is still being handled: 409 ``request-in-progress`` with
    ``Retry-After``."""

    code = 409
    slug = "request-in-progress"
    title = "Request in progress"


class StoreUnavailable(ProblemError):
    """The idempotency store is unreachable or stayed locked past its timeout: 503
    ``store-unavailable`` with ``Retry-After``."""

    code = 503
    slug = "store-unavailable"
    title = "Store unavailable"


class InvalidBody(ProblemError):
    """The request body is not what the handler asked for (e.g. not a JSON object): 400
    ``invalid-body``."""

    code = 400
    slug = "invalid-body"
    title = "Invalid request body"
