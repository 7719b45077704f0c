"""The browser client is served under /_cnerium/, as a module and as a plain script."""

from __future__ import annotations

import pytest
from flask import Flask

from flask_cnerium import Cnerium
from flask_cnerium.client import STATIC_DIR, umd_source


@pytest.fixture
def client_app() -> Flask:
    app = Flask(__name__)
    Cnerium(app)
    return app


@pytest.mark.parametrize("name", ["cnerium.js", "cnerium.umd.js"])
def test_client_files_are_served(client_app: Flask, name: str) -> None:
    response = client_app.test_client().get(f"/_cnerium/{name}")
    assert response.status_code == 200
    assert response.mimetype == "text/javascript"
    assert b"CneriumClient" in response.data


def test_unknown_client_file_is_404(client_app: Flask) -> None:
    assert client_app.test_client().get("/_cnerium/missing.js").status_code == 404


def test_umd_build_is_the_module_wrapped(client_app: Flask) -> None:
    module = (STATIC_DIR / "cnerium.js").read_text(encoding="utf-8")
    served = client_app.test_client().get("/_cnerium/cnerium.umd.js").get_data(as_text=True)
    assert served == umd_source(module)


def test_umd_build_exposes_window_cnerium() -> None:
    built = umd_source((STATIC_DIR / "cnerium.js").read_text(encoding="utf-8"))
    assert "export " not in built
    assert "root.Cnerium = { connect, CneriumClient, websocketUrl, backoffDelay };" in built


def test_module_without_default_export_is_refused() -> None:
    with pytest.raises(ValueError, match="export default"):
        umd_source("export function connect() {}\n")


def test_orders_dashboard_loads_the_client(tmp_path) -> None:
    from tests.test_example import load_example

    app = load_example().create_app(str(tmp_path))
    page = app.test_client().get("/").get_data(as_text=True)
    assert 'data-client="/_cnerium/cnerium.js"' in page
    assert 'data-ws="/ws"' in page
    assert 'id="retry"' in page
