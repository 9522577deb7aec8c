# Run: .venv/bin/pytest tests/appliance/test_no_torch.py
"""The device package never imports PyTorch or the training stack, not even transitively.

A fresh interpreter blocks those packages at import time, imports every module under
appliance/, builds the service app and runs `expert serve --help`; any import of a blocked
package fails the test with the chain that asked for it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.appliance.server_harness import offline_env

BLOCKED = (
    "torch", "transformers", "peft", "bitsandbytes", "accelerate", "optimum",
    "sentence_transformers", "safetensors.torch",
)  # fmt: skip

PROBE = textwrap.dedent(
    """
    import importlib, importlib.abc, pkgutil, sys, traceback

    BLOCKED = {blocked!r}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                raise ImportError(f"blocked import of {{name}}:\\n" + "".join(traceback.format_stack(limit=12)))
            return None

    sys.meta_path.insert(0, Block())

    import appliance
    failed = []
    for mod in pkgutil.walk_packages(appliance.__path__, "appliance."):
        try:
            importlib.import_module(mod.name)
        except ImportError as exc:
            failed.append(f"{{mod.name}}: {{exc}}")
    from pathlib import Path
    import tempfile
    from appliance.generation.fake import FakeGenerator
    from appliance.server import ServeConfig, create_app
    app = create_app(ServeConfig(state_dir=Path(tempfile.mkdtemp())), generator=FakeGenerator())
    assert app.test_client().get("/healthz").status_code == 200
    from appliance import cli
    try:
        cli.main(["serve", "--help"])
    except SystemExit as exc:
        assert exc.code == 0, exc.code
    loaded = sorted(m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in BLOCKED))
    print("FAILED:" + repr(failed))
    print("LOADED:" + repr(loaded))
    """
).format(blocked=BLOCKED)


def test_appliance_imports_without_torch():
    proc = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        env=offline_env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = dict(
        line.split(":", 1)
        for line in proc.stdout.splitlines()
        if line[:7] in ("FAILED:", "LOADED:")
    )
    assert lines["FAILED"] == "[]", lines["FAILED"]
    assert lines["LOADED"] == "[]", lines["LOADED"]
