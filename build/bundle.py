"""Assemble the unit of deployment: one versioned, checksummed (optionally signed) bundle.

Run: `expert bundle --llm DIR --embedder DIR --index DIR --name plant --version 1.0.0 --out dist/`
     `expert bundle --generate-key keys/bundle-signing.key` (ed25519 key pair for --sign-key)
Tests: `.venv/bin/pytest tests/build/test_bundle_build.py tests/appliance/test_bundle_verify.py`

The bundle is written to a hidden folder beside its destination, verified with the same
reader the device uses (appliance.bundle.load_bundle), then renamed into place, so a crash
never leaves a half-written bundle under the final name. A bundle of the same name and
version is never overwritten: bundles are immutable once written.

The quality gate binds: a bundle needs the gate result (`expert eval quality-gate --out`) of
the very model it ships. A missing gate, a malformed one (no `passed`, no model digest, figures
that contradict `passed`), a failed one, or one whose model digest is not that of `--llm`'s
files (appliance/quality_gate.py) is refused with the fix, unless `--accept-quality-loss`:
then the manifest's `quality_loss_accepted` records the problem overridden, who built the
bundle, the optional `--quality-loss-reason`, and the gate's figures or their absence.
"""

from __future__ import annotations

import base64
import datetime as dt
import getpass
import json
import math
import os
import platform
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.bundle import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    SIGNATURE_ALGORITHM,
    SIGNATURE_NAME,
    file_entries,
    load_bundle,
    public_key_id,
)
from appliance.common.fsutil import atomic_dir
from appliance.common.versions import package_versions
from appliance.errors import UserFacingError
from appliance.quality_gate import (
    FIGURES,
    GATE_FORMAT_VERSION,
    digest_of,
    manifest_model_hashes,
)

# Recorded in the manifest when installed, so a bundle says what built it.
RECORDED_PACKAGES = (
    "industry-expert",
    "onnxruntime",
    "onnxruntime-genai",
    "tokenizers",
    "hnswlib",
    "numpy",
    "flask",
    "waitress",
    "torch",
    "transformers",
    "peft",
    "optimum",
    "optimum-onnx",
    "onnx",
    "sentence-transformers",
    "gguf",
)
# Manifest keys the builder owns; `extra` may add others or refine e.g. `chunking`.
RESERVED_KEYS = frozenset(
    {
        "format_version",
        "name",
        "bundle_version",
        "created",
        "files",
        "quality_gate",
        "quality_loss_accepted",
    }
)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class BundleSpec:
    """What goes into a bundle. Validated once, naming the bad field."""

    name: str
    version: str
    llm_dir: Path
    embedder_dir: Path
    index_dir: Path
    adapters_dir: Path | None = None
    quality_gate: dict[str, Any] | None = None
    accept_quality_loss: bool = False
    quality_loss_reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for fname in ("name", "version"):
            value = getattr(self, fname)
            if not isinstance(value, str) or not _NAME_RE.match(value):
                raise UserFacingError(
                    f"bundle {fname} {value!r} is invalid: use letters, digits, '.', '_' or '-' "
                    "(at most 64, starting with a letter or digit), e.g. --name plant --version 1.0.0"
                )
        parts = [("llm_dir", "--llm"), ("embedder_dir", "--embedder"), ("index_dir", "--index")]
        if self.adapters_dir is not None:
            parts.append(("adapters_dir", "--adapters"))
        for fname, flag in parts:
            path = Path(getattr(self, fname))
            if not path.is_dir():
                raise UserFacingError(f"{fname} ({flag}) {path}: not a folder")
            if not any(p.is_file() for p in path.rglob("*")):
                raise UserFacingError(f"{fname} ({flag}) {path}: the folder has no files")
        if self.quality_loss_reason is not None and not self.accept_quality_loss:
            raise UserFacingError(
                "--quality-loss-reason only goes with --accept-quality-loss; drop it, or add "
                "--accept-quality-loss"
            )
        bad = RESERVED_KEYS & set(self.extra)
        if bad:
            raise UserFacingError(f"extra: keys {sorted(bad)} are set by the builder; remove them")


# --------------------------------------------------------------------------------------------
# The quality gate binds the bundle to a measured model


@dataclass(frozen=True)
class GateProblem:
    """Why a gate does not let a bundle through: `code` is missing, malformed, failed or
    foreign; `message` names the problem and the fix."""

    code: str
    message: str


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _rerun_hint(llm_dir: Path) -> str:
    return (
        f"run `expert eval quality-gate --hf CHECKPOINT --onnx {llm_dir} --docs DOCS "
        "--questions QA.jsonl --out gate.json` on this export and pass --quality-gate gate.json, "
        "or pass --accept-quality-loss to bundle it anyway (recorded in the manifest)"
    )


def gate_problem(
    gate: dict[str, Any] | None, llm_dir: Path, model_hashes: dict[str, str] | None = None
) -> GateProblem | None:
    """What stops `gate` from admitting the model of `llm_dir`; None when it passes.

    `model_hashes` ({file: sha256} of the model files being bundled): when given, the gate's
    model digest must match them; without it only the gate file itself is checked. A gate of
    another model is "foreign" even when it failed: its figures say nothing about this one.
    """
    hint = _rerun_hint(llm_dir)
    if gate is None:
        return GateProblem(
            "missing",
            f"no quality gate for {llm_dir}: a bundle ships only a model whose int4 loss was "
            f"measured; {hint}",
        )
    if not isinstance(gate, dict):
        return GateProblem("malformed", f"the quality gate is not a JSON object; {hint}")
    if "passed" not in gate:
        return GateProblem("malformed", f"the quality gate file has no `passed` field; {hint}")
    if not isinstance(gate["passed"], bool):
        return GateProblem(
            "malformed",
            f"the quality gate's `passed` is {gate['passed']!r}, not true/false; {hint}",
        )
    model = gate.get("model")
    digest = model.get("sha256") if isinstance(model, dict) else None
    if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
        return GateProblem(
            "malformed",
            "the quality gate records no model digest (`model.sha256`), so nothing ties it to "
            f"a model (a gate file of format < {GATE_FORMAT_VERSION}, or edited); {hint}",
        )
    thresholds = gate.get("thresholds")
    limits = {
        "perplexity_change_pct": ("max_perplexity_increase_pct", lambda v, t: v <= t),
        "top1_agreement": ("min_top1_agreement", lambda v, t: v >= t),
        "answer_agreement": ("min_answer_agreement", lambda v, t: v >= t),
    }
    if not isinstance(thresholds, dict) or not all(
        _number(thresholds.get(t)) for t, _ in limits.values()
    ):
        return GateProblem("malformed", f"the quality gate records no thresholds; {hint}")
    missing = [k for k in FIGURES if not _number(gate.get(k))]
    if missing:
        return GateProblem(
            "malformed", f"the quality gate lacks the figure(s) {', '.join(missing)}; {hint}"
        )
    within = all(ok(gate[k], thresholds[t]) for k, (t, ok) in limits.items())
    if gate["passed"] and not within:
        return GateProblem(
            "malformed",
            "the quality gate says passed, but its figures miss its own thresholds "
            f"({', '.join(f'{k} {gate[k]}' for k in FIGURES)} against {thresholds}); the file "
            f"was edited; {hint}",
        )
    if model_hashes is not None and digest != digest_of(model_hashes):
        recorded = model.get("files") if isinstance(model.get("files"), dict) else {}
        differs = sorted(
            n for n in set(recorded) | set(model_hashes) if recorded.get(n) != model_hashes.get(n)
        )
        return GateProblem(
            "foreign",
            f"the quality gate measured another model: its model digest {digest[:12]}… (of "
            f"{model.get('path', '?')}) is not {digest_of(model_hashes)[:12]}…, the digest of "
            f"--llm {llm_dir}"
            + (f" (files that differ: {', '.join(differs)})" if differs else "")
            + f"; {hint}",
        )
    if not gate["passed"]:
        failed = "; ".join(map(str, gate.get("failed") or [])) or ", ".join(
            f"{k} {gate[k]}" for k in FIGURES
        )
        return GateProblem(
            "failed",
            f"the quality gate failed ({failed}): the exported model lost too much against "
            f"{_reference_text(gate)}. Export with a better int4 setting (e.g. "
            "--int4-algo k_quant_mixed, a smaller --block-size) and re-run the gate, or pass "
            "--accept-quality-loss to bundle it anyway (recorded in the manifest)",
        )
    return None


def _reference_text(gate: dict[str, Any]) -> str:
    ref = gate.get("reference")
    return (ref.get("description") if isinstance(ref, dict) else None) or "its reference"


def _gate_figures(gate: Any) -> dict[str, Any] | None:
    """What a gate file said, for the acceptance record (whatever shape it has)."""
    if not isinstance(gate, dict):
        return None
    model = gate.get("model") if isinstance(gate.get("model"), dict) else {}
    keys = ("passed", *FIGURES, "thresholds", "failed")
    return {k: gate.get(k) for k in keys} | {
        "reference": _reference_text(gate) if gate.get("reference") else None,
        "model_sha256": model.get("sha256"),
        "model_path": model.get("path"),
    }


def _acceptance(spec: BundleSpec, problem: GateProblem | None) -> dict[str, Any]:
    try:
        who = f"{getpass.getuser()}@{socket.gethostname()}"
    except (KeyError, OSError):
        who = f"uid {os.getuid()}@{socket.gethostname()}"
    return {
        "flag": "--accept-quality-loss",
        "problem": problem.code if problem else None,
        "detail": problem.message if problem else "given, but the gate passed: nothing overridden",
        "by": who,
        "reason": spec.quality_loss_reason,
        "gate_figures": _gate_figures(spec.quality_gate),
    }


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserFacingError(f"{path}: not valid JSON ({exc}); fix or re-create it") from None
    if not isinstance(data, dict):
        raise UserFacingError(f"{path}: expected a JSON object")
    return data


def _first(mapping: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if mapping.get(key) not in (None, ""):
            return mapping[key]
    return None


def _base_model(export: dict[str, Any]) -> dict[str, Any] | None:
    """Who the LLM descends from, from export.json's `source` (written by `expert export`)."""
    if isinstance(export.get("base_model"), str | dict):
        base = export["base_model"]
        return base if isinstance(base, dict) else {"id": base}
    src = export.get("source") or {}
    if not src:
        return None
    imported = (src.get("import") or {}).get("source") or {}
    path = imported.get("path") or src.get("path")
    return {
        "id": src.get("name_or_path")
        or imported.get("name")
        or (Path(path).name if path else None),
        "architecture": src.get("architecture"),
        "model_type": src.get("model_type"),
        "config_sha256": src.get("config_sha256"),
        "source_kind": imported.get("kind"),
        "source_sha256": imported.get("sha256"),
    }


def _index_files(index_dir: Path) -> tuple[dict[str, Any], list[str] | None]:
    """The current version's manifest of a retrieval index, and the paths to ship.

    A versioned index (appliance.retrieval.versions) keeps older versions beside the current
    one; only `CURRENT` and the current version go into the bundle, after their checksums are
    verified. Any other folder is shipped whole (None).
    """
    from appliance.retrieval import versions

    if not versions.is_index(index_dir):
        return {}, None
    current = versions.read_pointer(index_dir)
    info = versions.verify_version(versions.version_dir(index_dir, current))
    return info, [versions.POINTER, f"{versions.VERSIONS}/{current}"]


def _check_embedder_matches_index(embedder: dict[str, Any], index: dict[str, Any]) -> None:
    built_with = index.get("embedder") or {}
    for key in ("model_id", "dim"):
        a, b = embedder.get(key), built_with.get(key)
        if a is not None and b is not None and a != b:
            raise UserFacingError(
                f"the index was built with embedder {key}={b!r} but --embedder has {a!r}: "
                "queries would be embedded differently from the chunks. Re-ingest with this "
                "embedder (expert ingest --rebuild) or pass the embedder the index was built with"
            )


def build_manifest(
    spec: BundleSpec, files: dict[str, dict[str, Any]], index: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The manifest of design.md from the spec, the parts' own metadata files and the hashes.

    `index`: the index's current-version manifest (read from spec.index_dir when None).
    """
    export = _read_json(spec.llm_dir / "export.json")
    embedder = _read_json(spec.embedder_dir / "embedder.json")
    if index is None:
        index, _ = _index_files(spec.index_dir)
    adapters = _read_json(spec.adapters_dir / "adapters.json") if spec.adapters_dir else {}
    # The gate is checked against the model files as copied into the bundle.
    problem = gate_problem(spec.quality_gate, spec.llm_dir, manifest_model_hashes(files, "llm"))
    if problem is not None and not spec.accept_quality_loss:
        raise UserFacingError(problem.message)
    # A gate of this model (passed, or failed and accepted) is kept whole; a missing,
    # malformed or foreign one only in the acceptance record, so nothing shows its figures
    # as this model's.
    gate = spec.quality_gate if problem is None or problem.code == "failed" else None
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "name": spec.name,
        "bundle_version": spec.version,
        "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "base_model": _base_model(export),
        "adapters": {"merged": export.get("adapter"), "runtime": adapters or None},
        "export": {k: v for k, v in export.items() if k != "files"} or None,
        "quality_gate": gate,
        "quality_loss_accepted": _acceptance(spec, problem) if spec.accept_quality_loss else None,
        "embedder": (
            {"id": _first(embedder, "model_id", "model", "id"), **embedder} if embedder else None
        ),
        "chunking": index.get("chunking"),
        "index": {k: v for k, v in index.items() if k not in ("files", "previous")} or None,
        "packages": package_versions(RECORDED_PACKAGES),
        "built_with": {"python": platform.python_version(), "machine": platform.machine()},
    }
    manifest.update(spec.extra)
    manifest["files"] = files
    return manifest


def _copy_tree(src: Path, dest: Path, progress, only: list[str] | None = None) -> None:
    def copy(s: str, d: str) -> str:
        out = shutil.copy2(s, d)
        progress.update(os.path.getsize(s))
        return out

    # symlinks=False: links are replaced by the files they point to; a bundle is self-contained.
    try:
        if only is None:
            shutil.copytree(src, dest, symlinks=False, copy_function=copy)
            return
        dest.mkdir(parents=True)
        for rel in only:
            if (src / rel).is_dir():
                shutil.copytree(src / rel, dest / rel, symlinks=False, copy_function=copy)
            else:
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                copy(str(src / rel), str(dest / rel))
    except shutil.Error as exc:
        first = exc.args[0][0] if exc.args and exc.args[0] else ("?", "?", str(exc))
        raise UserFacingError(
            f"{first[0]}: cannot copy into the bundle ({first[2]}); fix or remove it"
        ) from None
    except OSError as exc:
        raise UserFacingError(f"{exc.filename or src}: cannot copy ({exc.strerror})") from None


def _tree_size(path: Path, only: list[str] | None = None) -> int:
    roots = [path] if only is None else [path / rel for rel in only]
    return sum(
        p.stat().st_size
        for root in roots
        for p in ([root] if root.is_file() else root.rglob("*"))
        if p.is_file()
    )


def _load_private_key(path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UserFacingError(f"{path}: cannot read the signing key ({exc.strerror})") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise UserFacingError(
            f"{path}: not an unencrypted PEM private key; make one with "
            "`expert bundle --generate-key FILE`"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UserFacingError(f"{path}: not an ed25519 key; make one with `--generate-key`")
    return key


def sign_bundle(bundle_dir: Path, signing_key: Path) -> Path:
    """Write `manifest.sig`: an ed25519 signature over the exact bytes of manifest.json."""
    from cryptography.hazmat.primitives import serialization

    key = _load_private_key(signing_key)
    raw_pub = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    signature = key.sign((Path(bundle_dir) / MANIFEST_NAME).read_bytes())
    sig_path = Path(bundle_dir) / SIGNATURE_NAME
    sig_path.write_text(
        json.dumps(
            {
                "algorithm": SIGNATURE_ALGORITHM,
                "key_id": public_key_id(raw_pub),
                "signature": base64.b64encode(signature).decode("ascii"),
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    return sig_path


def public_key_path(private_key: Path) -> Path:
    """Where generate_signing_key puts the public half: `x.key` -> `x.pub`."""
    return Path(private_key).with_suffix(".pub")


def generate_signing_key(path: Path) -> tuple[Path, Path]:
    """Write a new ed25519 private key (PEM, mode 0600) and its public key (`.pub`).

    The private key stays on the build machine; copy the .pub to the device
    (install.sh --public-key) so it can require signed bundles.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    pub = public_key_path(path)
    if path.suffix == ".pub":
        raise UserFacingError(f"{path}: give the private key's name (e.g. signing.key), not .pub")
    for p in (path, pub):
        if p.exists():
            raise UserFacingError(f"{p}: exists; refusing to overwrite a key, choose another path")
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_pem)
    os.chmod(path, 0o600)
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path, pub


def build_bundle(
    out_root: Path,
    *,
    name: str,
    version: str,
    llm_dir: Path,
    embedder_dir: Path,
    index_dir: Path,
    adapters_dir: Path | None = None,
    quality_gate: dict | None = None,
    extra: dict | None = None,
    signing_key: Path | None = None,
    accept_quality_loss: bool = False,
    quality_loss_reason: str | None = None,
) -> Path:
    """Write `out_root/bundle-<name>-<version>/` and return it. See the module docstring."""
    from tqdm import tqdm

    spec = BundleSpec(
        name=name,
        version=version,
        llm_dir=Path(llm_dir),
        embedder_dir=Path(embedder_dir),
        index_dir=Path(index_dir),
        adapters_dir=Path(adapters_dir) if adapters_dir is not None else None,
        quality_gate=quality_gate,
        accept_quality_loss=accept_quality_loss,
        quality_loss_reason=quality_loss_reason,
        extra=dict(extra or {}),
    )
    # Refuse before copying gigabytes; the model digest is checked on the copied files.
    problem = gate_problem(quality_gate, spec.llm_dir)
    if problem is not None and not accept_quality_loss:
        raise UserFacingError(problem.message)
    if signing_key is not None:
        _load_private_key(Path(signing_key))  # fail before copying gigabytes
    out_root = Path(out_root)
    final = out_root / f"bundle-{name}-{version}"
    if final.exists() or final.is_symlink():
        raise UserFacingError(
            f"{final}: exists; bundles are immutable: pass a new --version or remove the old one"
        )
    # Bundles are immutable: never overwrite (refused above; atomic_dir refuses a late arrival).
    with atomic_dir(final, overwrite=False) as tmp:
        parts = [("llm", spec.llm_dir), ("embedder", spec.embedder_dir), ("index", spec.index_dir)]
        if spec.adapters_dir is not None:
            parts.append(("adapters", spec.adapters_dir))
        index_info, index_only = _index_files(spec.index_dir)
        _check_embedder_matches_index(_read_json(spec.embedder_dir / "embedder.json"), index_info)
        only = {"index": index_only}
        total = sum(_tree_size(src, only.get(part)) for part, src in parts)
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"bundle {final.name}") as bar:
            for part, src in parts:
                _copy_tree(src, tmp / part, bar, only.get(part))
        manifest = build_manifest(spec, file_entries(tmp), index_info)
        (tmp / MANIFEST_NAME).write_text(
            json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8"
        )
        if signing_key is None:
            # The device's own check, before the bundle gets its final name.
            load_bundle(tmp)
        else:
            sign_bundle(tmp, Path(signing_key))
            with tempfile.TemporaryDirectory(dir=out_root, prefix=".verify-") as keydir:
                public_key = Path(keydir) / "signing.pub"
                _write_public_key(Path(signing_key), public_key)
                load_bundle(tmp, require_signature=True, public_key=public_key)
        for dirpath, _dirs, filenames in os.walk(tmp):
            for fname in filenames:
                os.chmod(os.path.join(dirpath, fname), 0o444)
        os.chmod(tmp, 0o755)
    return final


def _write_public_key(private_key: Path, dest: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    key = _load_private_key(private_key)
    dest.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
