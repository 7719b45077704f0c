"""What survives ``fork()``: hooks that give a forked worker (gunicorn ``--preload``) its own
locks, threads and connections instead of the parent's."""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable


def in_forked_children(method: Callable[[], object]) -> None:
    """Call the bound ``method`` in every child forked from now on, for as long as its object
    lives: the hook holds it weakly, so registering never keeps an object alive."""
    ref = weakref.WeakMethod(method)

    def after_in_child() -> None:
        live = ref()
        if live is not None:
            live()

    os.register_at_fork(after_in_child=after_in_child)
