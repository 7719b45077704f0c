"""RFC 9457 problem responses: the one shape every error the extension answers with."""

from __future__ import annotations

import json
from http import HTTPStatus

from werkzeug.wrappers import Response

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_BASE_URI = "https://flask-cnerium.readthedocs.io/en/latest/problems/"


def problem_type(slug: str) -> str:
    """The ``type`` URI of one of the extension's problems: the docs page explaining it."""
    return slug if slug == "about:blank" else PROBLEM_BASE_URI + slug


def problem_body(status: int, detail: str, type: str = "about:blank",
                 title: str | None = None) -> dict:
    """The problem document as a dict; ``title`` defaults to the status phrase."""
    return {"type": type, "title": title or HTTPStatus(status).phrase, "status": status,
            "detail": detail}


def problem_response(status: int, detail: str, type: str = "about:blank",
                     title: str | None = None, headers: dict | None = None) -> Response:
    """A ready ``application/problem+json`` response."""
    return Response(problem_json(problem_body(status, detail, type, title)), status=status,
                    headers=headers, mimetype=PROBLEM_MEDIA_TYPE)


def problem_json(body: dict) -> str:
    """A problem document as compact JSON, members in RFC 9457's order."""
    return json.dumps(body, separators=(",", ":"))
