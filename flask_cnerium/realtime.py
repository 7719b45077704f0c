"""emit / emit_to and the hold-until-commit buffer of durable handlers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from flask import g


@contextmanager
def holding_events(held: list) -> Iterator[list]:
    """Hold the events emitted inside a durable handler in ``held`` until its record commits."""
    previous = g.get("_cnerium_held")
    g._cnerium_held = held
    try:
        yield held
    finally:
        g._cnerium_held = previous
