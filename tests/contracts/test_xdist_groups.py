"""pytest-xdist's `--dist loadgroup`, which the suite's addopts use: every test of an `xdist_group`
runs on one worker. The e2e tests rely on it (one real Flowise at a time, a core and a gigabyte
each), and so do the modules whose expensive set-up is shared (the interop matrix, the Redis
topologies). With pytest 9.2 it stops grouping without a word (pytest-dev/pytest-xdist#1386): this
runs a small suite under two workers and reads which worker ran what.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SUITE = '''
import os
import pytest

@pytest.mark.xdist_group("together")
@pytest.mark.parametrize("index", range(16))
def test_grouped(index):
    open(f"ran-grouped-{index}", "w").write(os.environ["PYTEST_XDIST_WORKER"])

@pytest.mark.parametrize("index", range(8))
def test_free(index):
    open(f"ran-free-{index}", "w").write(os.environ["PYTEST_XDIST_WORKER"])
'''


def test_loadgroup_whenTestsShareAGroup_thenOneWorkerRunsThemAll(tmp_path: Path) -> None:
    (tmp_path / "test_groups.py").write_text(SUITE)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # not this project's addopts
    # xdist alone: the other plugins installed (Playwright, schemathesis, ...) cost seconds of
    # imports in each of the three processes and are not what is tested.
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "xdist", "-p", "no:cacheprovider", "-n", "2", "--dist", "loadgroup",
         "-q"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    ran = [(path.name.split("-")[1], path.read_text()) for path in tmp_path.glob("ran-*")]
    assert len(ran) == 24, result.stdout
    assert len({worker for kind, worker in ran if kind == "grouped"}) == 1, ran
    # Both workers ran (the free tests go to whichever is idle, maybe all to the other one).
    assert len({worker for _, worker in ran}) == 2, ran
