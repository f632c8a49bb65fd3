"""The package layout is the data path: imports point one way, and no two modules share a name."""

from __future__ import annotations

import collections
import pathlib
import subprocess
import sys

import flowise_sse

PACKAGE = pathlib.Path(flowise_sse.__file__).parent
ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_imports_followTheDataPath_allContractsKept():
    lint = pathlib.Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_moduleNames_areUniqueAcrossThePackage():
    names = collections.Counter(
        path.stem for path in PACKAGE.rglob("*.py") if path.stem not in ("__init__", "__main__")
    )
    assert [name for name, count in names.items() if count > 1] == []
