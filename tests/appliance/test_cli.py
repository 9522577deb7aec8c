# Run: .venv/bin/pytest tests/appliance/test_cli.py
"""The `expert` command layer: one tree of commands, the same exit codes everywhere, and the
build commands only where the build extra is installed.

Exit status: 0 success, 1 a check that ran and failed, 2 bad usage or input. The failing check
(exit 1) is the quality gate: tests/build/test_quality_gate.py runs it on a tiny model.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from appliance import cli, commands
from tests.appliance.server_harness import offline_env

# A fresh interpreter where the build extra's key dependency cannot be imported, as on a device
# that installed only the `appliance` extra; then `expert ARGS`.
WITHOUT_TORCH = textwrap.dedent(
    """
    import importlib.abc, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoTorch())
    from appliance.cli import main
    code = main(sys.argv[1:])
    print("LOADED:" + ",".join(sorted(m for m in sys.modules if m.split(".")[0] in
                                      ("torch", "transformers", "build", "trainer"))))
    sys.exit(code)
    """
)


def expert_without_torch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH, *args],
        capture_output=True,
        text=True,
        env=offline_env(),
        timeout=120,
    )


def test_a_build_command_without_the_build_extra_says_how_to_install_it():
    proc = expert_without_torch("bundle", "--name", "plant", "--version", "1", "--out", "x")
    assert proc.returncode == 2, proc.stderr
    assert "expert bundle: this is a build-stage command and needs the build extra" in proc.stderr
    assert "missing: torch" in proc.stderr
    assert "pip install torch==2.13.0 && pip install 'industry-expert[build]'" in proc.stderr
    assert "Traceback" not in proc.stderr
    for command in commands.BUILD_COMMANDS:
        proc = expert_without_torch(command)
        assert proc.returncode == 2 and "needs the build extra" in proc.stderr, command


def test_device_commands_work_without_the_build_extra(tmp_path: Path):
    listing = expert_without_torch("--help")
    assert listing.returncode == 0, listing.stderr
    for name in (*commands.DEVICE_COMMANDS, *commands.BUILD_COMMANDS):
        assert f"\n    {name}" in listing.stdout, name
    state = tmp_path / "state"
    added = expert_without_torch("keys", "add", "terminal-1", "--state-dir", str(state))
    assert added.returncode == 0, added.stderr
    listed = expert_without_torch("keys", "list", "--state-dir", str(state))
    assert listed.returncode == 0 and listed.stdout.startswith("terminal-1\t"), listed.stderr
    # Nothing of the build stage was imported: not torch, not even the build commands.
    assert listed.stdout.rstrip().endswith("LOADED:"), listed.stdout


def test_the_registry_and_the_build_commands_agree():
    from build.commands import COMMAND_MODULES

    assert commands.missing_build_modules() == []  # this venv has the build extra
    assert [m.replace("_", "-") for m in COMMAND_MODULES] == list(commands.BUILD_COMMANDS)
    parser = cli.build_parser()
    names = list(cli._subcommands(parser))
    assert names == [*commands.DEVICE_COMMANDS, *commands.BUILD_COMMANDS]


def test_exit_codes(tmp_path: Path, capsys):
    assert cli.main([]) == 2  # no command: the help, on stderr
    assert "usage: expert" in capsys.readouterr().err
    assert cli.main(["--help"]) == 0
    assert cli.main(["no-such-command"]) == 2
    assert "invalid choice: 'no-such-command'" in capsys.readouterr().err
    assert cli.main(["ingest", str(tmp_path), "--index", str(tmp_path / "i"), "--nope"]) == 2
    assert "unrecognized arguments: --nope" in capsys.readouterr().err
    # bad input: a message naming the problem and the fix, no traceback
    state = tmp_path / "state"
    assert cli.main(["device", "current", "--state-dir", str(state)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("expert device: error: ") and "no bundle is active" in err
    assert cli.main(["keys", "add", "terminal-1", "--state-dir", str(state)]) == 0
    assert cli.main(["keys", "revoke", "terminal-1", "--state-dir", str(state)]) == 0
    assert cli.main(["keys", "revoke", "terminal-1", "--state-dir", str(state)]) == 2
    assert "terminal-1" in capsys.readouterr().err


def test_eval_subcommands_are_real_and_modes_is_the_default(tmp_path: Path, capsys):
    assert cli.main(["eval", "--help"]) == 0
    out = capsys.readouterr().out
    for sub in ("modes", "retrieval", "calibrate", "quality-gate"):
        assert sub in out
    # no subcommand: modes, which then asks for what it misses
    assert cli.main(["eval", "--bundle", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "pass --questions FILE" in capsys.readouterr().err
    # a flag of another subcommand is refused, naming where it belongs
    assert cli.main(["eval", "calibrate", "--bundle", "b", "--questions", "q", "--onnx", "o"]) == 2
    err = capsys.readouterr().err
    assert "--onnx do(es) not apply to `expert eval calibrate`" in err
    assert "`expert eval quality-gate`" in err
    assert cli.main(["eval", "quality-gate", "--hf", str(tmp_path)]) == 2
    assert "missing --onnx, --docs, --questions, --out" in capsys.readouterr().err
    assert cli.main(["eval", "quality-gate", "--min-top1", "2", "--hf", "h", "--onnx", "o",
                     "--docs", "d", "--questions", "q", "--out", "x"]) == 2  # fmt: skip
    assert "min_top1_agreement must be in [0, 1]" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["appliance.commands", "build.commands"])
def test_every_command_module_says_how_to_run_it(module):
    import importlib
    import pkgutil

    package = importlib.import_module(module)
    for info in pkgutil.iter_modules(package.__path__):
        doc = importlib.import_module(f"{module}.{info.name}").__doc__ or ""
        assert doc.startswith("`expert ") and "Run: `expert " in doc, info.name
