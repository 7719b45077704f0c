"""Serve a test app in this process: ``python -m tests.apps.serve MODULE:FACTORY PORT_FILE``.

The factory is called with no arguments (it reads its settings from the environment). The
server binds 127.0.0.1 on a free port, writes the port to ``PORT_FILE`` once it listens, and
serves with one thread per request until it is killed.
"""

from __future__ import annotations

import importlib
import os
import sys

from werkzeug.serving import make_server


def main(target: str, port_file: str) -> None:
    module_name, _, factory_name = target.partition(":")
    app = getattr(importlib.import_module(module_name), factory_name or "create_app")()
    server = make_server("127.0.0.1", 0, app, threaded=True)
    tmp = port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_port))
    os.replace(tmp, port_file)
    server.serve_forever()


if __name__ == "__main__":
    main(*sys.argv[1:3])
