"""typings/: the stubs mypy reads for python-socketio and python-engineio, which ship no types.

mypy trusts a stub as it is written; mypy's own stubtest compares each name and signature the
stubs declare with the installed package's, so a release that renames a parameter or drops a
method the gateway calls fails here rather than type-checking against a signature that is gone.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_stubs_whenComparedWithTheInstalledPackages_thenEveryDeclaredNameAndSignatureMatches(tmp_path: Path) -> None:
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\n")  # not pyproject's: stubtest checks the stubs alone
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "socketio", "engineio", "--ignore-missing-stub",
         "--mypy-config-file", str(config)],
        env={**os.environ, "MYPYPATH": str(ROOT / "typings")}, cwd=tmp_path, capture_output=True, text=True,
        timeout=120,
    )
    installed = f"python-socketio {version('python-socketio')}, python-engineio {version('python-engineio')}"
    assert result.returncode == 0, (
        f"typings/ no longer matches {installed}: update the stubs (typings/README.md)\n"
        + result.stdout + result.stderr)
