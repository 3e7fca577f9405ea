"""``pip install /path/to/callconsent`` (deploy/README.md) installs a wheel built from the
checkout, not the checkout itself: every file the packages hold (the migrations, the
templates, the prompt texts, the default config, the static files and the vendored
JavaScript) must be in it, or an installed daemon cannot migrate its store and the web console
has no pages. ``make install``'s editable install reads the checkout, so only a wheel shows
a file left out."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("agi", "esl_listener", "consent_ivr", "recorder", "callconsent", "web")


def tracked(*paths: str) -> list[str]:
    """The files git tracks (as they are in the working tree, changes included)."""
    out = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--", *paths],
        capture_output=True,
        check=True,
    ).stdout
    return [name for name in out.decode().split("\0") if name]


@pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout"
)
def test_the_wheel_holds_every_file_of_the_packages(tmp_path: Path) -> None:
    src = tmp_path / "src"  # a copy: pip builds in the tree it is given (build/, *.egg-info)
    for name in tracked():
        target = src / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).is_file():  # a tracked file deleted in the working tree is not
            shutil.copy2(ROOT / name, target)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    assert "BuildBackendWarning: Package" not in built.stderr, built.stderr[-3000:]
    (wheel,) = tmp_path.glob("callconsent-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {name for name in tracked(*PACKAGES) if (ROOT / name).is_file()}
    assert any(n.startswith("recorder/store/migrations/versions/") for n in expected)
    assert sorted(expected - names) == []
