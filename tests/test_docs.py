"""The docs: every public name has a docstring and is in the API reference, every problem slug
has its page, and the MkDocs site builds with --strict."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import blinker
import pytest

import flask_cnerium
from flask_cnerium import errors, signals, support
from flask_cnerium.problems import problem_type

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
API_MD = DOCS / "api.md"


# -- what is public ----------------------------------------------------------------------


def module_attribute_docstrings(module: ModuleType) -> dict[str, str]:
    """Docstrings written as a string right after a module-level ``name = ...``."""
    tree = ast.parse(inspect.getsource(module))
    found = {}
    for node, following in zip(tree.body, tree.body[1:], strict=False):
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, ast.AnnAssign) else []
        if (isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            for target in targets:
                if isinstance(target, ast.Name):
                    found[target.id] = following.value.value
    return found


def own_docstring(obj: object) -> str:
    """The docstring ``obj`` itself declares (not a base class's, not a dataclass's repr)."""
    if inspect.isclass(obj):
        doc = vars(obj).get("__doc__") or ""
        if dataclasses.is_dataclass(obj) and doc.startswith(f"{obj.__name__}("):
            return ""
        return doc.strip()
    if isinstance(obj, classmethod | staticmethod):
        obj = obj.__func__
    if isinstance(obj, property):
        obj = obj.fget
    return (getattr(obj, "__doc__", None) or "").strip()


def public_methods(cls: type) -> dict[str, object]:
    """Public functions, class/static methods and properties defined on ``cls`` itself."""
    kinds = (classmethod, staticmethod, property)
    return {name: value for name, value in vars(cls).items()
            if not name.startswith("_") and (inspect.isfunction(value) or isinstance(value, kinds))}


def exported() -> dict[str, tuple[object, str]]:
    """``flask_cnerium.X`` for X in ``__all__`` -> (object, its docstring)."""
    # A type alias such as EventPayload has no __doc__ of its own: its docstring is the
    # string after its assignment in the module that defines it.
    attribute_docs: dict[str, str] = {}
    for module_name in ("config", "durable", "events", "extension"):
        attribute_docs.update(module_attribute_docstrings(
            sys.modules[f"flask_cnerium.{module_name}"]))
    result = {}
    for name in flask_cnerium.__all__:
        obj = getattr(flask_cnerium, name)
        doc = own_docstring(obj) if inspect.isclass(obj) or inspect.isfunction(obj) \
            else attribute_docs.get(name, "")
        result[f"flask_cnerium.{name}"] = (obj, doc)
    return result


def exported_methods() -> dict[str, str]:
    """``flask_cnerium.Class.method`` for the public methods of every exported class."""
    result = {}
    for name in flask_cnerium.__all__:
        obj = getattr(flask_cnerium, name)
        if inspect.isclass(obj):
            for method, value in public_methods(obj).items():
                result[f"flask_cnerium.{name}.{method}"] = own_docstring(value)
    return result


def signal_docs() -> dict[str, str]:
    """``flask_cnerium.signals.X`` for every blinker signal in the module -> its docstring."""
    docs = module_attribute_docstrings(signals)
    return {f"flask_cnerium.signals.{name}": docs.get(name, "")
            for name, value in vars(signals).items()
            if isinstance(value, blinker.Signal) and not name.startswith("_")}


def exception_docs() -> dict[str, str]:
    """``flask_cnerium.errors.X`` for every exception class defined there -> its docstring."""
    return {f"flask_cnerium.errors.{name}": own_docstring(value)
            for name, value in vars(errors).items()
            if inspect.isclass(value) and issubclass(value, BaseException)
            and value.__module__ == errors.__name__ and not name.startswith("_")}


def support_docs() -> dict[str, str]:
    """``flask_cnerium.support.X`` for every public function defined there."""
    return {f"flask_cnerium.support.{name}": own_docstring(value)
            for name, value in vars(support).items()
            if inspect.isfunction(value) and value.__module__ == support.__name__
            and not name.startswith("_")}


def all_public() -> dict[str, str]:
    names = {qualified: doc for qualified, (_, doc) in exported().items()}
    names.update(exported_methods())
    names.update(signal_docs())
    names.update(exception_docs())
    names.update(support_docs())
    return names


def problem_slugs() -> list[str]:
    """The ``slug = "..."`` values of flask_cnerium/errors.py, the base's placeholder aside."""
    source = Path(errors.__file__).read_text(encoding="utf-8")
    return [slug for slug in re.findall(r'^\s+slug = "([^"]+)"', source, re.MULTILINE)
            if slug != "about:blank"]


# -- what api.md documents ---------------------------------------------------------------


def api_directives() -> dict[str, list[str] | None]:
    """Each ``::: target`` of api.md -> its ``members`` list, or ``None`` (all members)."""
    lines = API_MD.read_text(encoding="utf-8").splitlines()
    directives: dict[str, list[str] | None] = {}
    for index, line in enumerate(lines):
        match = re.fullmatch(r":::\s+([\w.]+)\s*", line)
        if not match:
            continue
        block = []
        for following in lines[index + 1:]:
            if following.strip() and not following.startswith((" ", "\t")):
                break
            block.append(following)
        members = None
        for position, option in enumerate(block):
            inline = re.fullmatch(r"\s+members:\s*\[(.*)\]\s*", option)
            if inline:
                members = [m.strip() for m in inline.group(1).split(",") if m.strip()]
            elif re.fullmatch(r"\s+members:\s*", option):
                members = []
                for item in block[position + 1:]:
                    entry = re.fullmatch(r"\s+-\s+(\w+)\s*", item)
                    if not entry:
                        break
                    members.append(entry.group(1))
        directives[match.group(1)] = members
    return directives


def documented(qualified: str, directives: dict[str, list[str] | None]) -> bool:
    """Whether a ``:::`` directive renders ``qualified``: itself, or as its parent's member."""
    if qualified in directives:
        return True
    parent, _, name = qualified.rpartition(".")
    return parent in directives and (directives[parent] is None or name in directives[parent])


# -- (a) docstrings ----------------------------------------------------------------------


def test_the_public_surface_is_found() -> None:
    names = all_public()
    assert "flask_cnerium.Cnerium.durable_post" in names
    assert "flask_cnerium.EventPayload" in names
    assert "flask_cnerium.signals.durable_executed" in names
    assert "flask_cnerium.errors.IdempotencyKeyReused" in names
    assert "flask_cnerium.support.int_or" in names
    assert len(signal_docs()) >= 9
    assert len(exception_docs()) >= 10


@pytest.mark.parametrize("qualified", sorted(all_public()))
def test_every_public_name_has_a_docstring(qualified: str) -> None:
    doc = all_public()[qualified]
    assert len(doc.split()) >= 2, f"{qualified} needs a docstring that says what it is and why"


# -- (b) the API reference ---------------------------------------------------------------


@pytest.mark.parametrize("qualified", sorted(all_public()))
def test_every_public_name_is_in_the_api_reference(qualified: str) -> None:
    assert documented(qualified, api_directives()), (
        f"{qualified} is not in docs/api.md: add '::: {qualified}' or list it under its "
        "class's 'members:'")


def test_api_directives_name_only_real_objects() -> None:
    public = all_public()
    for target in api_directives():
        assert target in public or target in {"flask_cnerium.signals", "flask_cnerium.errors",
                                              "flask_cnerium.support"}, target


# -- (c) problem pages -------------------------------------------------------------------


def test_the_six_problem_slugs_are_found() -> None:
    assert set(problem_slugs()) >= {
        "idempotency-key-missing", "idempotency-key-invalid", "idempotency-key-reused",
        "request-in-progress", "store-unavailable", "invalid-body"}


@pytest.mark.parametrize("slug", problem_slugs())
def test_every_problem_slug_has_its_page(slug: str) -> None:
    page = DOCS / "problems" / f"{slug}.md"
    assert page.is_file(), f"docs/problems/{slug}.md explains the problem type {slug}"
    assert page.read_text(encoding="utf-8").startswith(f"# {slug}\n")
    assert problem_type(slug).endswith(f"/problems/{slug}")
    assert f"(problems/{slug}.md)" in (DOCS / "problems.md").read_text(encoding="utf-8")
    assert f"- problems/{slug}.md" in (ROOT / "mkdocs.yml").read_text(encoding="utf-8")


# -- (d) the site builds -----------------------------------------------------------------


def _docs_tools_installed() -> bool:
    return all(importlib.util.find_spec(name) is not None
               for name in ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python"))


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    if not _docs_tools_installed():
        if os.environ.get("CI") == "true":
            pytest.fail("mkdocs / mkdocstrings-python are missing: pip install -r "
                        "requirements-dev.txt")
        pytest.skip("mkdocs / mkdocstrings-python not installed (pip install -r "
                    "requirements-dev.txt)")
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    for slug in problem_slugs():
        assert (site / "problems" / slug / "index.html").is_file(), slug
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    missing = [name for name in all_public() if f'id="{name}"' not in api]
    assert not missing, f"not rendered in the API reference: {missing}"
