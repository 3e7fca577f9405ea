"""The layout's rules (DESIGN.md, recorder/__init__.py), checked on the source, so that a file in
the wrong room or an import against the grain fails here: consent_ivr is pure; the adapters
(agi, esl_listener, web) never import each other; recorder's rooms import only those below
them; no module imports itself back through others; every package says what lives in it; and
tests/ mirrors the code, with the machinery in tests/sim/ and tests/support/ only."""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
OUR_PACKAGES = ("agi", "esl_listener", "web", "consent_ivr", "recorder", "callconsent")
#: recorder's rooms and the rooms each may import (``metrics`` is open to all of them)
ROOMS = {
    "store": set(),
    "vault": {"store"},
    "live": {"store"},
    "finalize": {"store", "vault"},
    "governance": {"store", "vault"},
}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


@cache
def all_modules() -> dict[str, Path]:
    return {
        module_name(p): p
        for pkg in OUR_PACKAGES
        if (ROOT / pkg).is_dir()
        for p in (ROOT / pkg).rglob("*.py")
    }


@cache
def module_imports(name: str) -> frozenset[str]:
    """The modules of ours that ``name`` imports, wherever the import stands (an import under
    ``if TYPE_CHECKING:`` is a dependency too). ``from pkg import sub`` names the submodule."""
    known = all_modules()

    def resolve(target: str) -> str | None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        return target or None

    found: set[str] = set()
    for node in ast.walk(ast.parse(known[name].read_text(), str(known[name]))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = [f"{node.module}.{a.name}" for a in node.names]
            targets = [s for s in subs if s in known] or [node.module]
        found |= {r for t in targets if (r := resolve(t)) and r != name}
    return frozenset(found)


def imports_of(package: str) -> set[tuple[str, str]]:
    """(file, top-level name) for every import in ``package``, ours or not."""
    found: set[tuple[str, str]] = set()
    for path in (ROOT / package).rglob("*.py"):
        rel = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {(rel, a.name.split(".")[0]) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add((rel, node.module.split(".")[0]))
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
        ("agi", "web"),
        ("esl_listener", "agi"),
        ("esl_listener", "web"),
        ("web", "agi"),
        ("web", "esl_listener"),
        ("consent_ivr", "recorder"),
        ("recorder", "agi"),
        ("recorder", "esl_listener"),
        ("recorder", "web"),
        ("recorder", "callconsent"),
        ("agi", "callconsent"),
        ("esl_listener", "callconsent"),
        ("web", "callconsent"),
    ],
)
def test_dependency_direction(package: str, forbidden: str) -> None:
    if not (ROOT / package).is_dir():
        pytest.skip(f"no {package}/ yet")
    bad = {(f, m) for f, m in imports_of(package) if m == forbidden}
    assert not bad, f"{package} must not import {forbidden}: {sorted(bad)}"


def room_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "recorder" and len(parts) > 2 else None


def test_recorder_rooms_import_only_the_rooms_below_them() -> None:
    assert {p.name for p in (ROOT / "recorder").iterdir() if (p / "__init__.py").exists()} == set(
        ROOMS
    ), "a new room in recorder/ needs its place in ROOMS (and in recorder/__init__.py)"
    loose = sorted(
        p.name
        for p in (ROOT / "recorder").glob("*.py")
        if p.name not in ("__init__.py", "metrics.py")
    )
    assert not loose, f"every recorder module lives in a room: {loose}"
    bad = [
        f"{mod} -> {dep}"
        for mod in all_modules()
        if (room := room_of(mod))
        for dep in module_imports(mod)
        if (other := room_of(dep)) and other != room and other not in ROOMS[room]
    ]
    assert not bad, f"recorder's rooms import only those below them ({ROOMS}): {bad}"


def cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in module_imports(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                on_stack.discard(w)
                component.append(w)
            on_stack.discard(v)
            if component:
                found.append(sorted([v, *component]))

    for module in sorted(all_modules()):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycles() -> None:
    """A module never imports itself back through others (TYPE_CHECKING imports count: a
    route that needs its adapter's shape takes a protocol, it does not import the adapter)."""
    assert not cycles(), f"import cycles: {cycles()}"


def test_the_cycle_finder_finds_a_cycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test above would pass on a finder that finds nothing: show it finds one."""
    fake = {"a": "import b\n", "b": "from a import x\n", "c": "import a\n"}
    for name, text in fake.items():
        (tmp_path / f"{name}.py").write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    all_modules.cache_clear()
    module_imports.cache_clear()
    monkeypatch.setattr(
        sys.modules[__name__], "all_modules", lambda: {n: tmp_path / f"{n}.py" for n in fake}
    )
    try:
        assert cycles() == [["a", "b"]]
    finally:
        module_imports.cache_clear()


def test_every_package_says_what_lives_in_it() -> None:
    silent = [
        str(p.relative_to(ROOT))
        for pkg in OUR_PACKAGES
        for p in (ROOT / pkg).rglob("__init__.py")
        if not ast.get_docstring(ast.parse(p.read_text()))
    ]
    assert not silent, f"open these with a docstring that says what lives there: {silent}"


def test_no_module_is_over_the_size_we_allow() -> None:
    """STYLE.md: a file over ~400 lines is a smell; 600 is where we stop and split."""
    long = {
        str(p.relative_to(ROOT)): n
        for pkg in OUR_PACKAGES
        for p in (ROOT / pkg).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 600
    }
    assert not long, f"split these modules: {long}"


def test_tests_mirror_the_code_and_the_machinery_has_its_own_rooms() -> None:
    """tests/<package>/… mirrors a code package (or is tests/realpbx/); tests/sim/ (simulated
    PBXs, capture replay) and tests/support/ (rigs, harnesses, scripts) hold no tests; a test
    folder holds only tests."""
    misplaced = []
    for path in TESTS.rglob("*.py"):
        rel = path.relative_to(TESTS)
        if rel.parts[0] == "fixtures" or rel.name == "conftest.py" or rel == Path("test_layout.py"):
            continue
        top = rel.parts[0]
        if top in ("sim", "support"):
            if rel.name.startswith("test_"):
                misplaced.append(f"{rel}: a test in the machinery's room")
        elif not rel.name.startswith("test_"):
            misplaced.append(f"{rel}: machinery belongs in tests/sim/ or tests/support/")
        elif top != "realpbx" and not (ROOT / rel.parent).is_dir():
            misplaced.append(f"{rel}: no code package {rel.parent}/ for it to mirror")
        elif len(rel.parts) == 1:
            misplaced.append(f"{rel}: tests live in the folder of the code they test")
    assert not misplaced, "\n".join(sorted(misplaced))
