# Run: .venv/bin/pytest tests/build/test_package.py   (part of make test; about 3 min on 2 cores, first run)
"""`make package` end to end, as on an air-gapped box.

Builds a real bundle (SmolLM2 int4, the MiniLM embedder, the example plant's index), packages
it, unpacks the tarball, runs install.sh into a fresh virtual environment with no package
index reachable (pip's index points at a closed loopback port, no pip config is read), serves
from the installed copy on loopback and gets an answer; then refuses an unsigned bundle,
upgrades to a second signed one, reloads with SIGHUP, and rolls back.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from appliance.bundle import load_bundle
from build.bundle import build_bundle, generate_signing_key
from build.package import FORBIDDEN_WHEELS, make_package

# Re-checks the README's air-gapped install claim in every `make test` (first run compiles the
# hnswlib wheel into the test cache; later runs reuse it).
pytestmark = pytest.mark.claim

REPO = Path(__file__).resolve().parents[2]
# The portable hnswlib wheel is compiled once and kept beside the conftest's model cache.
WHEEL_CACHE = Path(os.environ.get("EXPERT_TEST_CACHE", REPO / "var" / "test-cache")) / "wheel-cache"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def _wait_ready(url: str, server: subprocess.Popen, want_model: str, limit_s: float = 180) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"server exited with {server.returncode}")
        try:
            status, body = _get(url + "/readyz")
            if status == 200 and body.get("model") == want_model:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"server not ready with {want_model} after {limit_s} s")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, smollm2_onnx_int4, embedder_onnx, plant_index) -> dict:
    """Two signed bundles of the same parts (1.0.0, 1.1.0), an unsigned one, and the key.
    The index is the session's cached example-plant index (bundles copy it)."""
    root = tmp_path_factory.mktemp("bundles")
    parts = {
        "llm_dir": smollm2_onnx_int4,
        "embedder_dir": embedder_onnx,
        "index_dir": plant_index,
        "accept_quality_loss": True,  # the package is tested here, not the gate
    }
    private, public = generate_signing_key(root / "keys" / "signing.key")
    out = root / "out"
    return {
        "v1": build_bundle(out, name="plant", version="1.0.0", signing_key=private, **parts),
        "v2": build_bundle(out, name="plant", version="1.1.0", signing_key=private, **parts),
        "unsigned": build_bundle(out, name="plant", version="1.2.0", **parts),
        "public_key": public,
        "private_key": private,
    }


def _tar(bundle: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w") as tar:
        tar.add(bundle, arcname=bundle.name)
    return dest


def test_package_installs_offline_and_serves(bundles, tmp_path: Path):
    v1, v2 = bundles["v1"], bundles["v2"]
    tarball = make_package(
        v1,
        tmp_path / "dist",
        wheel_cache=WHEEL_CACHE,
        public_key=bundles["public_key"],
        signing_key=bundles["private_key"],
    )
    assert tarball.name == "industry-expert-plant-1.0.0-linux-x86_64.tar"
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "unpacked", filter="data")
    top = tmp_path / "unpacked" / tarball.name.removesuffix(".tar")
    wheels = [n.rsplit("/", 1)[1] for n in names if n.endswith(".whl")]
    assert any(w.startswith("hnswlib-") for w in wheels) and any(
        w.startswith("industry_expert-") for w in wheels
    )
    assert not [w for w in wheels if w.split("-")[0].replace("_", "-") in FORBIDDEN_WHEELS]
    assert (top / "install.sh").stat().st_mode & 0o111
    load_bundle(top / "bundle" / v1.name)

    closed = _free_port()  # nothing listens here: any index access fails at once
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV"))}
    env |= {"PIP_INDEX_URL": f"http://127.0.0.1:{closed}/simple", "PIP_CONFIG_FILE": os.devnull}
    prefix, state, conf = tmp_path / "opt", tmp_path / "state", tmp_path / "etc"
    base_python = (
        Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    )
    install = subprocess.run(
        [
            str(top / "install.sh"),
            "--prefix",
            str(prefix),
            "--state-dir",
            str(state),
            "--conf-dir",
            str(conf),
            "--python",
            str(base_python),
            "--public-key",
            str(bundles["public_key"]),  # obtained separately: authenticates the package
            "--no-user",
            "--no-systemd",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    assert "--no-systemd: unit written to" in install.stdout
    assert "package signature verified" in install.stdout
    assert (state / "current").resolve() == state / "bundles" / v1.name
    unit = (prefix / "industry-expert.service").read_text()
    assert f"ExecStart={prefix}/venv/bin/expert serve" in unit
    assert f"ReadWritePaths={state}/service" in unit
    env_file = (conf / "env").read_text()
    assert f"EXPERT_STATE_DIR={state}/service" in env_file
    assert "EXPERT_REQUIRE_SIGNATURE=1" in env_file  # the package carried the public key
    venv_python = prefix / "venv" / "bin" / "python"
    no_torch = subprocess.run(
        [
            str(venv_python),
            "-c",
            "import importlib.util as u; import appliance.server.app; "
            "print([m for m in ('torch', 'transformers', 'peft') if u.find_spec(m)])",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert no_torch.stdout.strip() == "[]", no_torch.stderr

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            str(prefix / "venv" / "bin" / "expert"),
            "serve",
            "--bundle",
            str(state / "current"),
            "--state-dir",
            str(state / "service"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--slots",
            "1",
        ],
        env=env | {"EXPERT_STATE_DIR": str(state / "service")},
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "serve.log", "w"),
    )
    try:
        _wait_ready(url, server, v1.name)
        body = json.dumps(
            {
                "model": v1.name,
                "messages": [{"role": "user", "content": "What does alarm E-47 mean?"}],
                "max_tokens": 24,
            }
        ).encode()
        req = urllib.request.Request(
            url + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=120) as resp:
            answer = json.loads(resp.read())
        assert answer["choices"][0]["message"]["content"].strip()

        def upgrade(bundle: Path) -> subprocess.CompletedProcess:
            archive = _tar(bundle, tmp_path / f"{bundle.name}.tar")
            cmd = [
                str(top / "install.sh"),
                "--upgrade-bundle",
                str(archive),
                "--conf-dir",
                str(conf),
            ]
            return subprocess.run(cmd, env=env, capture_output=True, text=True)

        # The device requires signatures now: an unsigned bundle is refused, nothing switches.
        refused = upgrade(bundles["unsigned"])
        assert refused.returncode != 0 and "manifest.sig: missing" in refused.stderr
        assert (state / "current").resolve().name == v1.name

        # Upgrade from a tarball: verified, installed, switched; SIGHUP makes the server load it.
        up = upgrade(v2)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "no systemd here: send SIGHUP" in up.stdout
        assert (state / "current").resolve().name == v2.name
        server.send_signal(signal.SIGHUP)
        _wait_ready(url, server, v2.name)

        back = subprocess.run(
            [str(top / "install.sh"), "--rollback", "--conf-dir", str(conf)],
            env=env,
            capture_output=True,
            text=True,
        )
        assert back.returncode == 0, back.stdout + back.stderr
        server.send_signal(signal.SIGHUP)
        _wait_ready(url, server, v1.name)
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert server.returncode == 0, (tmp_path / "serve.log").read_text()[-3000:]
