# Run: .venv/bin/pytest tests/systemd/test_install_sh.py
"""install.sh's signing-key and package checks, run as a normal user on a scratch package
(no venv, no root, no systemd): a configured key always means signatures are required, and a
package is authenticated only by a key from outside it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from build.bundle import generate_signing_key
from build.package import write_checksums

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "systemd" / "install.sh"

needs_tools = pytest.mark.skipif(
    not (shutil.which("openssl") and shutil.which("sha256sum")), reason="needs openssl, sha256sum"
)


def run(top: Path, conf: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(top / "install.sh"), "--conf-dir", str(conf), "--state-dir",
         str(top.parent / "state"), "--prefix", str(top.parent / "opt"), "--no-user",
         "--no-systemd", *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.fixture
def keys(tmp_path: Path):
    good = generate_signing_key(tmp_path / "keys" / "good.key")
    other = generate_signing_key(tmp_path / "keys" / "other.key")
    return good, other


def make_package(tmp_path: Path, signing_key: Path | None) -> Path:
    top = tmp_path / "pkg"
    (top / "wheelhouse").mkdir(parents=True)
    shutil.copy(INSTALL, top / "install.sh")
    (top / "wheelhouse" / "industry_expert-1.0-py3-none-any.whl").write_bytes(b"wheel bytes")
    (top / "package.json").write_text('{"python": "cp311"}\n')
    write_checksums(top, signing_key)
    return top


def env_lines(conf: Path) -> list[str]:
    return [line for line in (conf / "env").read_text().splitlines() if not line.startswith("#")]


@needs_tools
def test_set_public_key_always_requires_signatures(tmp_path: Path, keys):
    (good, good_pub), (_, other_pub) = keys
    top = make_package(tmp_path, None)
    conf = tmp_path / "etc"
    conf.mkdir()
    # An env file from an install without a key (kept by every reinstall).
    (conf / "env").write_text("EXPERT_HOST=0.0.0.0\n# EXPERT_BUNDLE_PUBLIC_KEY=/x.pub\n")
    proc = run(top, conf, "--set-public-key", str(good_pub))
    assert proc.returncode == 0, proc.stderr
    lines = env_lines(conf)
    assert f"EXPERT_BUNDLE_PUBLIC_KEY={conf}/bundle-signing.pub" in lines
    assert "EXPERT_REQUIRE_SIGNATURE=1" in lines and "EXPERT_HOST=0.0.0.0" in lines
    assert (conf / "bundle-signing.pub").read_bytes() == good_pub.read_bytes()
    # Rotating the key is the operator's call: the new one replaces it, no duplicate lines.
    assert run(top, conf, "--set-public-key", str(other_pub)).returncode == 0
    assert (conf / "bundle-signing.pub").read_bytes() == other_pub.read_bytes()
    assert sum(line.startswith("EXPERT_BUNDLE_PUBLIC_KEY=") for line in env_lines(conf)) == 1
    bad = tmp_path / "not-a-key.pub"
    bad.write_text("hello\n")
    proc = run(top, conf, "--set-public-key", str(bad))
    assert proc.returncode != 0 and "not an ed25519 public key" in proc.stderr


@needs_tools
def test_the_package_is_authenticated_with_a_key_from_outside_it(tmp_path: Path, keys):
    (good, good_pub), (other, other_pub) = keys
    conf = tmp_path / "etc"
    conf.mkdir()
    shutil.copy(good_pub, conf / "bundle-signing.pub")  # configured on the box
    top = make_package(tmp_path, good)
    ok = run(top, conf, "--verify-package")
    assert ok.returncode == 0 and "signature verified" in ok.stdout, ok.stderr
    # A file altered after signing.
    (top / "package.json").write_text('{"python": "cp312"}\n')
    bad = run(top, conf, "--verify-package")
    assert bad.returncode != 0 and "damaged" in bad.stderr
    # ... with SHA256SUMS recomputed to match: the signature no longer does.
    sig = (top / "SHA256SUMS.sig").read_bytes()
    write_checksums(top, None)
    (top / "SHA256SUMS.sig").write_bytes(sig)
    bad = run(top, conf, "--verify-package")
    assert bad.returncode != 0 and "signature does not verify" in bad.stderr
    # Re-signed by someone else, who also ships their own key inside the package.
    write_checksums(top, other)
    (top / "keys").mkdir()
    shutil.copy(other_pub, top / "keys" / "bundle-signing.pub")
    bad = run(top, conf, "--verify-package")
    assert bad.returncode != 0 and "signature does not verify" in bad.stderr
    # Unsigned, while this box has a key: refused.
    (top / "SHA256SUMS.sig").unlink()
    bad = run(top, conf, "--verify-package")
    assert bad.returncode != 0 and "not signed" in bad.stderr
    # The operator's --public-key works where none is configured yet.
    (conf / "bundle-signing.pub").unlink()
    write_checksums(top, other)
    ok = run(top, conf, "--verify-package", "--public-key", str(other_pub))
    assert ok.returncode == 0, ok.stderr
