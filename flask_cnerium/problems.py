"""RFC 9457 problem responses: the one shape every error the extension answers with."""

from __future__ import annotations

import json
from http import HTTPStatus

from werkzeug.wrappers import Response

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_BASE_URI = "https://flask-cnerium.readthedocs.io/en/latest/problems/"


def problem_type(slug: str) -> str:
    """The ``type`` URI of one of the extension's problems: the docs page explaining it."""
    return PROBLEM_BASE_URI + slug


def problem_body(status: int, detail: str, type: str = "about:blank", title: str | None = None,
                 **extra: object) -> dict:
    """The problem document as a dict; ``title`` defaults to the status phrase."""
    body = {"type": type, "title": title or HTTPStatus(status).phrase,
            "status": status, "detail": detail}
    body.update(extra)
    return body


def problem_response(status: int, detail: str, type: str = "about:blank",
                     title: str | None = None, headers: dict | None = None) -> Response:
    """A ready ``application/problem+json`` response."""
    body = json.dumps(problem_body(status, detail, type, title), separators=(",", ":"))
    return Response(body, status=status, headers=headers, mimetype=PROBLEM_MEDIA_TYPE)
