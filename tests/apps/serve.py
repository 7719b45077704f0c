"""Serve a test app in this process: ``python -m tests.apps.serve MODULE:FACTORY PORT_FILE``.

The factory is called with no arguments (it reads its settings from the environment). The
server binds 127.0.0.1 on a free port, writes the port to ``PORT_FILE`` once it listens, and
serves with one thread per request until it is killed, or until the test process that
started it dies (so no server outlives a killed test run).
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import time

from werkzeug.serving import make_server


def exit_with_parent() -> None:
    """Exit as soon as the process that started this one is gone."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(target: str, port_file: str) -> None:
    exit_with_parent()
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
