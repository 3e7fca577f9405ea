"""The dependency rules of DESIGN.md, checked on the source: consent_ivr is pure, and the two
PBX adapters never import each other."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OUR_PACKAGES = {"agi", "esl_listener", "consent_ivr", "recorder", "callconsent", "web"}


def imports_of(package: str) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {(str(path.relative_to(ROOT)), a.name.split(".")[0]) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add((str(path.relative_to(ROOT)), node.module.split(".")[0]))
    return found


def test_consent_ivr_imports_only_the_standard_library() -> None:
    bad = {
        (f, m)
        for f, m in imports_of("consent_ivr")
        if m not in sys.stdlib_module_names and m != "consent_ivr"
    }
    assert not bad, f"consent_ivr must stay stdlib-only: {sorted(bad)}"


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("agi", "esl_listener"),
        ("esl_listener", "agi"),
        ("consent_ivr", "recorder"),
        ("recorder", "agi"),
        ("recorder", "esl_listener"),
        ("recorder", "callconsent"),
        ("agi", "callconsent"),
        ("esl_listener", "callconsent"),
        ("web", "agi"),
        ("web", "esl_listener"),
        ("web", "callconsent"),
        ("agi", "web"),
        ("esl_listener", "web"),
        ("recorder", "web"),
        ("consent_ivr", "web"),
    ],
)
def test_dependency_direction(package: str, forbidden: str) -> None:
    bad = {(f, m) for f, m in imports_of(package) if m == forbidden}
    assert not bad, f"{package} must not import {forbidden}: {sorted(bad)}"


def test_no_module_is_over_the_size_we_allow() -> None:
    """STYLE.md: a file over ~400 lines is a smell; 600 is where we stop and split."""
    long = {
        str(p.relative_to(ROOT)): n
        for pkg in OUR_PACKAGES
        for p in (ROOT / pkg).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 600
    }
    assert not long, f"split these modules: {long}"
