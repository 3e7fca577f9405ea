"""`make test` and `make run` as root from a checkout below a 0700 directory (issue 14, point 0).

The daemon switches to its account, which must then read the checkout's code and reach its
``./var/``: a clone in a ``mktemp -d`` directory or under ``/root`` is closed to it unless
``make`` grants it traversal (callconsent.devaccess). These run the real Makefile on a copy of
this tree in a fresh 0700 directory; slow (each creates its own virtualenv)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT_DIR = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="only root's daemon switches accounts"),
]


@pytest.fixture
def private_clone() -> Iterator[Path]:
    """This tree (uncommitted changes included, no .venv) in a fresh 0700 directory."""
    outer = Path(tempfile.mkdtemp(prefix="callconsent-0700-"))
    assert outer.stat().st_mode & 0o777 == 0o700
    clone = outer / "cc"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "-co", "--exclude-standard"],
        cwd=ROOT_DIR, capture_output=True, check=True,
    ).stdout  # fmt: skip
    names = [n for n in listed.decode().split("\0") if n and (ROOT_DIR / n).is_file()]
    for name in names:
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT_DIR / name, clone / name)
    yield clone
    subprocess.run(["rm", "-rf", str(outer)], check=False)


def test_make_test_runs_the_daemon_tests_from_a_0700_directory(private_clone: Path) -> None:
    args = "-q -p no:cacheprovider -rs tests/callconsent/test_serve.py"
    done = subprocess.run(
        ["make", "test", f"PYTEST_ARGS={args}"],
        cwd=private_clone, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "granted it traversal" in out  # the 0700 directory was opened, and said so
    # pytest's "6 passed in 16.4s" (make -w may print "Leaving directory" after it)
    summary = [line for line in done.stdout.splitlines() if re.search(r"\d+ passed", line)][-1:]
    assert summary, out
    assert "skipped" not in summary[0] and "failed" not in summary[0], out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_make_run_serves_from_a_0700_directory_with_its_state_in_var(private_clone: Path) -> None:
    config = private_clone / "run.toml"  # the embedded defaults' ./var/, on a free metrics port
    config.write_text(f'[daemon]\ndata_dir = "var"\n\n[metrics]\nport = {free_port()}\n')
    proc = subprocess.Popen(
        ["make", "run", f"CONFIG={config}"],
        cwd=private_clone, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "event=ready" in line:
                break
        assert any("event=ready" in x for x in lines), "".join(lines)
        assert (private_clone / "var" / "callconsent.db").stat().st_uid != 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def test_the_daemon_names_the_directory_that_closes_its_installation(
    private_clone: Path,
) -> None:
    """Without the grant, the daemon says which account cannot read what, and why: not
    alembic's "Path doesn't exist … Please use the 'init' command"."""
    workdir = Path(tempfile.mkdtemp(prefix="callconsent-open-"))
    try:
        workdir.chmod(0o755)
        cfg = workdir / "callconsent.toml"
        cfg.write_text('[daemon]\ndata_dir = "data"\nuser = "nobody"\n')
        cfg.chmod(0o644)
        done = subprocess.run(
            [sys.executable, "-m", "callconsent", "--config", str(cfg), "serve"],
            capture_output=True, text=True, timeout=120, cwd=workdir,
            env={**os.environ, "PYTHONPATH": str(private_clone)},
        )  # fmt: skip
    finally:
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
    assert done.returncode == 1, done.stderr
    assert "Please use the 'init' command" not in done.stderr
    # the first thing of its installation it cannot reach: this copy's migrations, or, when
    # this very suite runs from a 0700 directory too (as CI may), the interpreter's venv there
    found = re.search(
        r"the account nobody cannot read (\S+): it cannot enter (\S+) "
        r"\(mode 0[0-7]+, owner root:root\)",
        done.stderr,
    )
    assert found, done.stderr
    unreadable, closed = Path(found[1]), Path(found[2])
    assert closed in unreadable.parents
    assert closed in (private_clone.parent, *Path(sys.executable).parents), done.stderr
    assert "init" not in done.stderr
