"""The module layering of README's Architecture section, enforced by import-linter."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_hold() -> None:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    res = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "broken" in res.stdout and "0 broken" in res.stdout
    assert "the simulator imports one way: entry points -> HTTP app -> state -> data KEPT" \
        in res.stdout


def test_lint_is_clean() -> None:
    """ruff with the rules in pyproject.toml (pyflakes errors and naive datetimes) over the
    code and its tests."""
    exe = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    res = subprocess.run([exe, "check", "--output-format", "concise", "syncd", "tests"], cwd=ROOT,
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
