# Run: .venv/bin/pytest tests/test_test_cache.py
"""The test cache (tests/conftest.py `cached_dir`) shared by two test runs at once: the artefact
is built once, and neither run removes the other's half-built folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

# One test run asking for an artefact whose build takes a while and leaves a trace of who built it.
CHILD = """
import os, sys, time
from pathlib import Path
from tests.conftest import cached_dir

def make(tmp: Path) -> None:
    with open(sys.argv[1], "a") as log:
        log.write(f"{os.getpid()}\\n")
    tmp.mkdir()
    time.sleep(1.5)  # long enough for the other run to ask meanwhile
    (tmp / "built-by").write_text(str(os.getpid()))

print(cached_dir("slow-artefact", ("tests/conftest.py",), make))
"""


def test_two_runs_build_a_cached_artefact_once(tmp_path: Path) -> None:
    builds = tmp_path / "builds.log"
    env = {**os.environ, "EXPERT_TEST_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(builds)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err for _, err in results]
    folders = {out.strip() for out, _ in results}
    assert len(folders) == 1
    folder = Path(folders.pop())
    assert (folder / ".complete").is_file() and (folder / "built-by").is_file()
    assert len(builds.read_text().split()) == 1  # the second run waited, then reused it
    assert not (tmp_path / "cache" / ".slow-artefact.partial").exists()
