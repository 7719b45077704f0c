"""The browser client, served under ``/_cnerium/``, and its plain-script form.

``cnerium.js`` is the one source (an ES module). ``cnerium.umd.js`` is made from it when
first asked for: the same code wrapped to expose ``window.Cnerium``.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from flask import Blueprint, Flask, Response

CLIENT_URL_PATH = "/_cnerium"
"""Where the client's files are served: ``/_cnerium/cnerium.js`` and ``cnerium.umd.js``."""

STATIC_DIR = Path(__file__).parent / "static"
"""The folder holding ``cnerium.js``."""

_EXPORTS = re.compile(r"^export default \{(?P<names>[^}]*)\};\n", re.MULTILINE)


def client_blueprint() -> Blueprint:
    """A blueprint serving the static browser client under :data:`CLIENT_URL_PATH`."""
    blueprint = Blueprint("cnerium_client", __name__, static_folder=str(STATIC_DIR),
                          static_url_path="", url_prefix=CLIENT_URL_PATH)
    blueprint.get("/cnerium.umd.js")(serve_umd)
    return blueprint


def serve_umd() -> Response:
    """``/_cnerium/cnerium.umd.js``: the plain-script build, made once per process."""
    return Response(_built_umd(), mimetype="text/javascript")


@functools.cache
def _built_umd() -> str:
    return umd_source((STATIC_DIR / "cnerium.js").read_text(encoding="utf-8"))


def register_client(app: Flask) -> None:
    """Serve the browser client from ``app`` (``/_cnerium/cnerium.js``)."""
    app.register_blueprint(client_blueprint())


def umd_source(module_source: str) -> str:
    """The plain-script build of the ES module ``module_source``, exposing ``window.Cnerium``."""
    match = _EXPORTS.search(module_source)
    if match is None:
        raise ValueError("cnerium.js must end its exports with 'export default { ... };'.")
    names = ", ".join(name.strip() for name in match["names"].split(",") if name.strip())
    body = _EXPORTS.sub("", module_source)
    body = re.sub(r"^export (function|class|const) ", r"\1 ", body, flags=re.MULTILINE)
    body = "\n".join(("  " + line) if line else line for line in body.rstrip().splitlines())
    return ("// Made from cnerium.js by flask_cnerium.client; edit that file instead.\n"
            "(function (root) {\n  \"use strict\";\n" + body + "\n\n"
            f"  root.Cnerium = {{ {names} }};\n"
            "})(typeof self !== \"undefined\" ? self : this);\n")
