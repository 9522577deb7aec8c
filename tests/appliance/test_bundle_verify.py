# Run: .venv/bin/pytest tests/appliance/test_bundle_verify.py
"""The device refuses every damaged bundle, naming the file, and switches bundles atomically.

Bundles here hold small fake llm/embedder/index folders: verification does not care what is
inside them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from appliance.bundle import (
    SignaturePolicy,
    activate,
    install_bundle,
    list_installed,
    load_bundle,
    load_bundle_with_policy,
    resolve_current,
    rollback,
)
from appliance.errors import BundleError
from build.bundle import build_bundle, generate_signing_key

REPO = Path(__file__).resolve().parents[2]
# The shape `expert export` writes (build/export_llm.py), trimmed.
EXPORT_JSON = json.dumps(
    {
        "backend": "genai",
        "precision": "int4",
        "adapter": None,
        "files": ["model.onnx"],
        "source": {
            "architecture": "LlamaForCausalLM",
            "model_type": "llama",
            "name_or_path": None,
            "import": {"source": {"kind": "gguf", "name": "SmolLM2", "sha256": "ab" * 32}},
        },
    }
).encode()


def make_parts(root: Path, *, adapters: bool = False) -> dict[str, Path]:
    parts = {
        "llm_dir": root / "parts" / "llm",
        "embedder_dir": root / "parts" / "embedder",
        "index_dir": root / "parts" / "index",
    }
    files = {
        "llm_dir": {
            "model.onnx": b"onnx-graph",
            "model.onnx.data": os.urandom(4096),
            "genai_config.json": b"{}",
            "export.json": EXPORT_JSON,
        },
        "embedder_dir": {"model.onnx": b"embedder", "embedder.json": b'{"model_id": "minilm"}'},
        "index_dir": {
            "chunks.sqlite": b"sqlite",
            "vectors.hnsw": os.urandom(1024),
            "sub/notes.txt": b"nested",
        },
    }
    if adapters:
        parts["adapters_dir"] = root / "parts" / "adapters"
        files["adapters_dir"] = {"maint.onnx_adapter": b"lora", "adapters.json": b'{"maint": {}}'}
    for key, content in files.items():
        for rel, data in content.items():
            path = parts[key] / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    return parts


def make_bundle(tmp: Path, version: str = "1.0.0", **kw) -> Path:
    adapters = kw.pop("adapters", False)
    kw.setdefault("accept_quality_loss", True)  # fake model files: nothing to gate
    return build_bundle(
        tmp / "out",
        name="plant",
        version=version,
        **make_parts(tmp / f"src-{version}", adapters=adapters),
        **kw,
    )


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return make_bundle(tmp_path)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[Path, Path]:
    return generate_signing_key(tmp_path_factory.mktemp("keys") / "signing.key")


def writable(path: Path) -> Path:
    path.chmod(0o644)
    return path


def test_loads_a_good_bundle(tmp_path: Path):
    b = load_bundle(make_bundle(tmp_path, adapters=True))
    assert b.llm_dir == b.root / "llm" and (b.llm_dir / "model.onnx").is_file()
    assert b.embedder_dir.is_dir() and b.index_dir.is_dir() and b.adapters_dir is not None
    assert b.manifest["format_version"] == 1 and b.name == "plant" and b.version == "1.0.0"
    assert b.id == "bundle-plant-1.0.0" and not b.signed


def test_no_adapters_dir_is_none(bundle: Path):
    assert load_bundle(bundle).adapters_dir is None


def test_tampered_file_is_refused(bundle: Path):
    path = writable(bundle / "llm" / "model.onnx.data")
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF  # same size, different content
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"llm/model\.onnx\.data: sha256 does not match"):
        load_bundle(bundle)


def test_truncated_file_is_refused(bundle: Path):
    path = writable(bundle / "index" / "vectors.hnsw")
    os.truncate(path, 10)
    with pytest.raises(BundleError, match=r"index/vectors\.hnsw: size 10 bytes.*truncated"):
        load_bundle(bundle)


def test_extra_file_is_refused(bundle: Path):
    (bundle / "embedder" / "stray.bin").write_bytes(b"x")
    with pytest.raises(BundleError, match=r"not in the manifest: embedder/stray\.bin"):
        load_bundle(bundle)


def test_missing_file_is_refused(bundle: Path):
    (bundle / "index" / "sub" / "notes.txt").unlink()
    with pytest.raises(BundleError, match=r"missing: index/sub/notes\.txt"):
        load_bundle(bundle)


def test_missing_manifest_is_refused(bundle: Path):
    (bundle / "manifest.json").unlink()
    with pytest.raises(BundleError, match=r"manifest\.json: missing"):
        load_bundle(bundle)


def _rewrite_manifest(bundle: Path, **changes) -> None:
    path = writable(bundle / "manifest.json")
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def test_wrong_format_version_is_refused(bundle: Path):
    _rewrite_manifest(bundle, format_version=99)
    with pytest.raises(
        BundleError,
        match=r"manifest\.json: bundle format version 99 is not "
        r"supported.*upgrade the appliance",
    ):
        load_bundle(bundle)
    _rewrite_manifest(bundle, format_version="1")
    with pytest.raises(BundleError, match=r"manifest\.json: format_version missing or not an int"):
        load_bundle(bundle)


def test_corrupt_manifest_is_refused(bundle: Path):
    writable(bundle / "manifest.json").write_text('{"format_version": 1,')
    with pytest.raises(BundleError, match=r"manifest\.json: not valid JSON"):
        load_bundle(bundle)


def test_unsafe_manifest_path_is_refused(bundle: Path):
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["../outside"] = {"sha256": "0" * 64, "size": 1}
    _rewrite_manifest(bundle, files=manifest["files"])
    with pytest.raises(BundleError, match=r"'\.\./outside' is not a safe relative path"):
        load_bundle(bundle)


def test_link_pointing_outside_is_refused(bundle: Path, tmp_path: Path):
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    target = bundle / "index" / "chunks.sqlite"
    target.unlink()
    target.symlink_to(outside)
    with pytest.raises(BundleError, match=r"index/chunks\.sqlite: a link pointing outside"):
        load_bundle(bundle)


def test_signed_bundle_verifies(tmp_path: Path, keys):
    private, public = keys
    b = load_bundle(
        make_bundle(tmp_path, signing_key=private), require_signature=True, public_key=public
    )
    assert b.signed


def test_bad_signature_is_refused(tmp_path: Path, keys):
    private, _ = keys
    _, other_public = generate_signing_key(tmp_path / "other.key")
    path = make_bundle(tmp_path, signing_key=private)
    with pytest.raises(
        BundleError,
        match=r"manifest\.sig: the signature does not match.*signed "
        r"with key [0-9a-f]{16}, checked with",
    ):
        load_bundle(path, require_signature=True, public_key=other_public)


def test_manifest_edited_after_signing_is_refused(tmp_path: Path, keys):
    private, public = keys
    path = make_bundle(tmp_path, signing_key=private)
    _rewrite_manifest(path, name="other-plant")  # file checksums still match
    with pytest.raises(BundleError, match=r"manifest\.sig: the signature does not match"):
        load_bundle(path, public_key=public)


def test_garbled_signature_file_is_refused(tmp_path: Path, keys):
    private, public = keys
    path = make_bundle(tmp_path, signing_key=private)
    writable(path / "manifest.sig").write_text("not json")
    with pytest.raises(BundleError, match=r"manifest\.sig: unreadable or malformed"):
        load_bundle(path, public_key=public)


def test_unsigned_when_required_is_refused(bundle: Path, keys):
    _, public = keys
    with pytest.raises(BundleError, match=r"manifest\.sig: missing.*only signed bundles"):
        load_bundle(bundle, require_signature=True, public_key=public)
    with pytest.raises(BundleError, match=r"no public key was given"):
        load_bundle(bundle, require_signature=True)


def test_signature_policy_from_env(keys):
    _, public = keys
    policy = SignaturePolicy.from_env(
        {"EXPERT_REQUIRE_SIGNATURE": "1", "EXPERT_BUNDLE_PUBLIC_KEY": str(public)}
    )
    assert policy.require_signature and policy.public_key == public
    assert not SignaturePolicy.from_env({}).require_signature
    with pytest.raises(BundleError, match="EXPERT_BUNDLE_PUBLIC_KEY"):
        SignaturePolicy.from_env({"EXPERT_REQUIRE_SIGNATURE": "yes"})
    with pytest.raises(BundleError, match="not a boolean"):
        SignaturePolicy.from_env({"EXPERT_REQUIRE_SIGNATURE": "maybe"})


def test_verifying_100_mb_is_fast(tmp_path: Path):
    parts = make_parts(tmp_path)
    with open(parts["llm_dir"] / "model.onnx.data", "wb") as fh:
        for _ in range(100):
            fh.write(os.urandom(1 << 20))
    path = build_bundle(
        tmp_path / "out", name="big", version="1", accept_quality_loss=True, **parts
    )
    start = time.perf_counter()
    load_bundle(path)
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, f"verifying 100 MB took {elapsed:.2f} s"


# ---------------------------------------------------------------------------------------------
# Install, activate, rollback


def test_install_activate_rollback(tmp_path: Path):
    state = tmp_path / "state"
    v1, v2 = make_bundle(tmp_path, "1.0.0"), make_bundle(tmp_path, "1.1.0")
    with pytest.raises(BundleError, match="no bundle is active"):
        resolve_current(state)
    installed = install_bundle(v1, state, activate_now=True)
    assert installed == state / "bundles" / "bundle-plant-1.0.0"
    assert resolve_current(state) == installed
    assert os.readlink(state / "current") == "bundles/bundle-plant-1.0.0"  # relative link
    with pytest.raises(BundleError, match="no previous bundle"):
        rollback(state)

    install_bundle(v2, state)
    assert resolve_current(state).name == "bundle-plant-1.0.0"  # installing does not switch
    activate(state, "bundle-plant-1.1.0")
    assert resolve_current(state).name == "bundle-plant-1.1.0"
    assert load_bundle(state / "current").root == state / "bundles" / "bundle-plant-1.1.0"

    assert rollback(state).name == "bundle-plant-1.0.0"
    assert resolve_current(state).name == "bundle-plant-1.0.0"
    assert rollback(state).name == "bundle-plant-1.1.0"  # rolling back twice returns
    assert list_installed(state) == ["bundle-plant-1.0.0", "bundle-plant-1.1.0"]
    assert not [p for p in state.iterdir() if p.name.startswith(".")]  # no temp links left


def test_install_is_idempotent_and_refuses_a_different_same_named_bundle(tmp_path: Path):
    state = tmp_path / "state"
    original = make_bundle(tmp_path / "a")
    first = install_bundle(original, state)
    assert install_bundle(original, state) == first  # same bundle again
    other = make_bundle(tmp_path / "b")  # same name + version, different content
    with pytest.raises(BundleError, match="a different bundle with this name and version"):
        install_bundle(other, state)


def test_install_refuses_a_damaged_bundle_and_leaves_nothing(bundle: Path, tmp_path: Path):
    os.truncate(writable(bundle / "llm" / "model.onnx"), 1)
    state = tmp_path / "state"
    with pytest.raises(BundleError, match=r"llm/model\.onnx: size 1 bytes"):
        install_bundle(bundle, state, activate_now=True)
    assert list_installed(state) == [] and not (state / "current").exists()
    assert not list((state / "bundles").iterdir())


@pytest.mark.parametrize(
    "arcname", ["bundle-plant-1.0.0", "industry-expert-plant-1.0.0/bundle/bundle-plant-1.0.0"]
)
def test_install_from_tarball(bundle: Path, tmp_path: Path, arcname: str):
    """A tarball of the bundle folder, or a `make package` tarball holding it."""
    archive = tmp_path / "bundle.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(bundle, arcname=arcname)
    installed = install_bundle(archive, tmp_path / "state", activate_now=True)
    assert resolve_current(tmp_path / "state") == installed
    assert load_bundle(installed).name == "plant"


def test_activate_unknown_bundle_names_the_installed_ones(bundle: Path, tmp_path: Path):
    install_bundle(bundle, tmp_path / "state")
    with pytest.raises(
        BundleError,
        match=r"bundle-nope: not installed \(installed: "
        r"bundle-plant-1\.0\.0\)",
    ):
        activate(tmp_path / "state", "bundle-nope")


def test_device_cli(bundle: Path, tmp_path: Path):
    env = {**os.environ, "EXPERT_STATE_DIR": str(tmp_path / "state")}
    cmd = [sys.executable, "-m", "appliance.cli", "device"]
    ok = subprocess.run(
        [*cmd, "install", "--activate", str(bundle)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    cur = subprocess.run([*cmd, "current"], env=env, cwd=REPO, capture_output=True, text=True)
    assert cur.stdout.strip().endswith("bundles/bundle-plant-1.0.0")
    (writable(bundle / "index" / "chunks.sqlite")).write_bytes(b"SQLITE")
    bad = subprocess.run(
        [*cmd, "verify", str(bundle)], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "index/chunks.sqlite: sha256 does not match" in bad.stderr
    assert "Traceback" not in bad.stderr


# ---------------------------------------------------------------------------------------------
# Review findings (issue 12)


def test_a_configured_public_key_always_requires_a_signature(tmp_path: Path, keys):
    """Deleting manifest.sig must not turn a tampered bundle into an accepted unsigned one."""
    private, public = keys
    path = make_bundle(tmp_path, signing_key=private)
    writable(path / "manifest.sig")
    (path / "manifest.sig").unlink()
    with pytest.raises(BundleError, match=r"manifest\.sig: missing.*public key is configured"):
        load_bundle(path, public_key=public)
    with pytest.raises(BundleError, match=r"manifest\.sig: missing"):
        load_bundle_with_policy(
            path, SignaturePolicy.from_env({"EXPERT_BUNDLE_PUBLIC_KEY": str(public)})
        )
    with pytest.raises(BundleError, match=r"manifest\.sig: missing"):
        install_bundle(path, tmp_path / "state", public_key=public)
    assert list_installed(tmp_path / "state") == []


def test_the_manifest_is_read_once(tmp_path: Path, keys, monkeypatch):
    """The bytes whose signature is checked are the bytes whose file list is used."""
    import io

    private, public = keys
    path = make_bundle(tmp_path, signing_key=private)
    opened: list[str] = []
    real_os_open, real_io_open = os.open, io.open

    def spy_os_open(p, *a, **k):
        opened.append(str(p))
        return real_os_open(p, *a, **k)

    def spy_io_open(p, *a, **k):
        opened.append(str(p))
        return real_io_open(p, *a, **k)

    monkeypatch.setattr(os, "open", spy_os_open)
    monkeypatch.setattr(io, "open", spy_io_open)
    load_bundle(path, public_key=public)
    monkeypatch.undo()
    assert [p for p in opened if p.endswith("manifest.json")] == [str(path / "manifest.json")]


def test_install_fsyncs_files_then_folders_then_switches(tmp_path: Path, monkeypatch):
    events: list[tuple[str, str]] = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, *a, **k):
        events.append(("replace", str(dst)))
        return real_replace(src, dst, *a, **k)

    def rename(src, dst, *a, **k):
        events.append(("rename", str(dst)))
        return real_rename(src, dst, *a, **k)

    state = tmp_path / "state"
    src = make_bundle(tmp_path)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", rename)
    installed = install_bundle(src, state, activate_now=True)
    monkeypatch.undo()

    files = {p.relative_to(installed).as_posix() for p in installed.rglob("*") if p.is_file()}
    dirs = {p.relative_to(installed).as_posix() for p in installed.rglob("*") if p.is_dir()}
    move = events.index(("rename", str(installed)))
    switch = events.index(("replace", str(state / "current")))
    synced_before_move = [p for kind, p in events[:move] if kind == "fsync" and "/copy" in p]
    rel = {p.split("/copy", 1)[1].lstrip("/") for p in synced_before_move}
    assert files <= rel, f"not fsynced before the move: {sorted(files - rel)}"
    assert dirs | {""} <= rel, f"folders not fsynced: {sorted(dirs - rel)}"
    order = [
        (i, p.split("/copy", 1)[1].lstrip("/"))
        for i, (k, p) in enumerate(events[:move])
        if k == "fsync" and "/copy" in p
    ]
    last_file = max(i for i, r in order if r in files)
    first_dir = min(i for i, r in order if r in dirs | {""})
    assert last_file < first_dir, "a folder was fsynced before all files were"
    assert ("fsync", str(state / "bundles")) in events[move:switch], "bundles/ not fsynced"
    assert ("fsync", str(state)) in events[switch:], "the link switch was not made durable"


def test_a_current_bundle_that_fails_verification_falls_back_to_previous(tmp_path: Path, caplog):
    import logging

    from appliance.bundle import load_current_or_previous

    state = tmp_path / "state"
    install_bundle(make_bundle(tmp_path, "1.0.0"), state, activate_now=True)
    install_bundle(make_bundle(tmp_path, "2.0.0"), state, activate_now=True)
    damaged = writable(state / "bundles" / "bundle-plant-2.0.0" / "llm" / "model.onnx.data")
    os.truncate(damaged, 10)  # a power cut before the data reached the disk
    caplog.set_level(logging.ERROR, logger="appliance.bundle")
    bundle, note = load_current_or_previous(state / "current")
    assert bundle.id == "bundle-plant-1.0.0"
    assert "model.onnx.data" in note and "bundle-plant-1.0.0" in note
    assert any(
        r.levelno >= logging.CRITICAL and "FALLBACK" in r.getMessage() for r in caplog.records
    )
    # A bundle given by its folder (not the `current` link) never falls back.
    with pytest.raises(BundleError, match="model.onnx.data"):
        load_current_or_previous(state / "bundles" / "bundle-plant-2.0.0")
    # Both bad: a clear error.
    os.truncate(writable(state / "bundles" / "bundle-plant-1.0.0" / "llm" / "model.onnx"), 1)
    with pytest.raises(BundleError, match="previous bundle failed too"):
        load_current_or_previous(state / "current")


def test_a_python_without_tarfile_filters_refuses_to_unpack(
    bundle: Path, tmp_path: Path, monkeypatch
):
    archive = tmp_path / "bundle.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(bundle, arcname=bundle.name)

    def old_extractall(self, path=".", members=None, *, numeric_owner=False):
        raise AssertionError("must not unpack without a filter")  # pragma: no cover

    # Python < 3.11.4: extractall() takes no `filter`, so the call raises TypeError.
    monkeypatch.setattr(tarfile.TarFile, "extractall", old_extractall)
    with pytest.raises(BundleError, match=r"tarfile filters need Python >= 3\.11\.4"):
        install_bundle(archive, tmp_path / "state")
    assert list_installed(tmp_path / "state") == []
