"""The seed's small JSON helpers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def string_or(obj: Mapping[str, Any], key: str, default: str = "") -> str:
    """``obj[key]`` when it is a string, else ``default``."""
    value = obj.get(key) if isinstance(obj, Mapping) else None
    return value if isinstance(value, str) else default


def int_or(obj: Mapping[str, Any], key: str, default: int = 0) -> int:
    """``obj[key]`` when it is an integer (not a bool), else ``default``."""
    value = obj.get(key) if isinstance(obj, Mapping) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else default
