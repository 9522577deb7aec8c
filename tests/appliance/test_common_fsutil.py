# Run: .venv/bin/pytest tests/appliance/test_common_fsutil.py
"""The one crash-safe writer: its overwrite rule, clean-up on errors, and a real kill -9.

A child process is killed with SIGKILL while it writes a new version of a folder (and of a
file); the old one must still be there, whole, with no half-written target.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from appliance.common.fsutil import (
    atomic_dir,
    atomic_file,
    atomic_write_text,
    partial_prefix,
    sha256_file,
)
from appliance.errors import UserFacingError

REPO = Path(__file__).resolve().parents[2]


def _tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): p.read_text()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _old(tmp_path: Path) -> Path:
    target = tmp_path / "out"
    target.mkdir()
    (target / "a.txt").write_text("old a")
    (target / "sub").mkdir()
    (target / "sub" / "b.txt").write_text("old b")
    return target


def test_new_folder_appears_whole(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "out"
    with atomic_dir(target) as work:
        assert work.parent == target.parent and work.name.startswith(partial_prefix(target))
        assert not target.exists()
        (work / "x").write_text("1")
    assert _tree(target) == {"x": "1"}
    assert [p.name for p in target.parent.iterdir()] == ["out"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o777 & ~umask  # made like mkdir makes one


def test_existing_folder_is_kept_without_overwrite(tmp_path: Path) -> None:
    target = _old(tmp_path)
    with pytest.raises(UserFacingError, match="not overwriting it"), atomic_dir(target) as work:
        (work / "x").write_text("new")
    assert _tree(target) == {"a.txt": "old a", "sub/b.txt": "old b"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # the new folder was removed


def test_overwrite_replaces_and_an_empty_folder_counts_as_none(tmp_path: Path) -> None:
    target = _old(tmp_path)
    with atomic_dir(target, overwrite=True) as work:
        (work / "x").write_text("new")
    assert _tree(target) == {"x": "new"}
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_dir(empty) as work:
        (work / "y").write_text("y")
    assert _tree(empty) == {"y": "y"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "out"]  # no .old- left


def test_an_error_leaves_the_old_folder_and_no_partial(tmp_path: Path) -> None:
    target = _old(tmp_path)
    with pytest.raises(KeyboardInterrupt), atomic_dir(target, overwrite=True) as work:
        (work / "x").write_text("half")
        raise KeyboardInterrupt
    assert _tree(target) == {"a.txt": "old a", "sub/b.txt": "old b"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_files_follow_the_same_rule(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    atomic_write_text(target, "one")
    with pytest.raises(UserFacingError, match="not overwriting it"):
        atomic_write_text(target, "two")
    assert target.read_text() == "one"
    atomic_write_text(target, "three", overwrite=True, mode=0o600)
    assert target.read_text() == "three" and target.stat().st_mode & 0o777 == 0o600
    with pytest.raises(RuntimeError), atomic_file(target, overwrite=True) as tmp:
        tmp.write_text("half")
        raise RuntimeError("stop")
    assert target.read_text() == "three"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_sha256_file(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    (tmp_path / "blob").write_bytes(data)
    assert sha256_file(tmp_path / "blob") == hashlib.sha256(data).hexdigest()


CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from appliance.common.fsutil import atomic_dir, atomic_file

    kind, target = sys.argv[1], Path(sys.argv[2])
    if kind == "dir":
        with atomic_dir(target, overwrite=True) as work:
            for i in range(50):
                (work / f"new-{i}.txt").write_text("new " * 1000)
            print("writing", flush=True)
            while True:  # still writing when the kill comes
                (work / "big.bin").open("ab").write(b"x" * 65536)
                time.sleep(0.01)
    else:
        with atomic_file(target, overwrite=True) as tmp, open(tmp, "wb") as fh:
            fh.write(b"new" * 1000)
            fh.flush()
            print("writing", flush=True)
            while True:
                fh.write(b"x" * 65536)
                time.sleep(0.01)
    """
)


@pytest.mark.parametrize("kind", ["dir", "file"])
def test_kill_9_mid_write_keeps_the_old_target(tmp_path: Path, kind: str) -> None:
    if kind == "dir":
        target = _old(tmp_path)
        before = _tree(target)
    else:
        target = tmp_path / "report.json"
        target.write_text('{"old": true}\n')
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, kind, str(target)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout.readline().strip() == "writing"
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    # The old target is whole; only the hidden partial sibling is left behind.
    if kind == "dir":
        assert _tree(target) == before
    else:
        assert target.read_text() == '{"old": true}\n'
    leftovers = [p for p in tmp_path.iterdir() if p != target]
    assert leftovers and all(p.name.startswith(partial_prefix(target)) for p in leftovers)
    # The next writer is not hindered by the leftover.
    if kind == "dir":
        with atomic_dir(target, overwrite=True) as work:
            (work / "x").write_text("next")
        assert _tree(target) == {"x": "next"}
    else:
        atomic_write_text(target, "next", overwrite=True)
        assert target.read_text() == "next"
