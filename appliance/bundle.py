"""Open, verify and switch bundles on the device.

Run: `expert device verify DIR` (also `install`, `activate`, `rollback`, `current`, `list`;
appliance/commands/device.py). Tests: `.venv/bin/pytest tests/appliance/test_bundle_verify.py`.

A bundle is the unit of deployment (see build/bundle.py, which writes it). Nothing in it is
loaded before `load_bundle` has checked the manifest's format version, the optional ed25519
signature, and the size and sha256 of every file, with no file missing and none extra. A
half-copied, truncated or tampered bundle is refused with a `BundleError` naming the file.

On the device the state directory holds the installed bundles and two links:

    <state_dir>/bundles/bundle-<name>-<version>/   immutable, verified on install
    <state_dir>/current  -> bundles/bundle-...     what the service serves
    <state_dir>/previous -> bundles/bundle-...     what `rollback` returns to

Links are swapped by `rename(2)`, so a reader sees the old bundle or the new one, never a
half-switched state.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import stat
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.common.fsutil import sha256_file, sha256_fileobj
from appliance.errors import BundleError

log = logging.getLogger("appliance.bundle")

FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
SIGNATURE_ALGORITHM = "ed25519"
# Files at the bundle root that the manifest does not list (it cannot list itself).
UNLISTED = frozenset({MANIFEST_NAME, SIGNATURE_NAME})
REQUIRED_DIRS = ("llm", "embedder", "index")
OPTIONAL_DIRS = ("adapters",)

BUNDLES_DIR = "bundles"
CURRENT_LINK = "current"
PREVIOUS_LINK = "previous"

# Device-side signature policy, read by `SignaturePolicy.from_env` (systemd EnvironmentFile).
ENV_REQUIRE_SIGNATURE = "EXPERT_REQUIRE_SIGNATURE"
ENV_PUBLIC_KEY = "EXPERT_BUNDLE_PUBLIC_KEY"
ENV_STATE_DIR = "EXPERT_STATE_DIR"

_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: paths of its parts and its parsed manifest."""

    root: Path
    manifest: dict[str, Any]
    llm_dir: Path
    embedder_dir: Path
    index_dir: Path
    adapters_dir: Path | None
    signed: bool = False

    @property
    def name(self) -> str:
        return str(self.manifest.get("name", ""))

    @property
    def version(self) -> str:
        return str(self.manifest.get("bundle_version", ""))

    @property
    def id(self) -> str:
        """The bundle's folder name, e.g. `bundle-plant-1.0.0`; shown in /v1/models."""
        return self.root.name


@dataclass(frozen=True)
class SignaturePolicy:
    """Whether the device requires signed bundles, and the key that checks them."""

    require_signature: bool = False
    public_key: Path | None = None

    def __post_init__(self) -> None:
        if self.require_signature and self.public_key is None:
            raise BundleError(
                f"signed bundles are required but no public key is configured: set "
                f"{ENV_PUBLIC_KEY} to the .pub file written with the signing key"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SignaturePolicy:
        env = os.environ if env is None else env
        raw = env.get(ENV_REQUIRE_SIGNATURE, "").strip().lower()
        if raw not in ("", "0", "1", "true", "false", "yes", "no"):
            raise BundleError(f"{ENV_REQUIRE_SIGNATURE}={raw!r} is not a boolean; use 1 or 0")
        key = env.get(ENV_PUBLIC_KEY, "").strip()
        return cls(raw in ("1", "true", "yes"), Path(key) if key else None)


# --------------------------------------------------------------------------------------------
# Hashing and manifests (shared with build/bundle.py, which writes what this module reads)


def file_entries(root: Path) -> dict[str, dict[str, Any]]:
    """{posix relative path: {sha256, size}} for every file under root but the manifest."""
    return {
        rel: {"sha256": sha256_file(path), "size": path.stat().st_size}
        for rel, path in _walk_files(root)
        if rel not in UNLISTED
    }


def _sha256_checked(path: Path, root: Path, size: int) -> str:
    """sha256 of the file at `path`, hashed from one open descriptor whose size is checked
    on that same descriptor (a file swapped after the size check cannot slip through). A
    link inside the bundle is followed to its checked target; nothing else is followed."""
    target = path.resolve() if path.is_symlink() else path
    if not target.is_relative_to(root):
        raise BundleError(f"{path}: leads outside the bundle")
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise BundleError(
            f"{path}: cannot be opened ({exc.strerror}); copy the bundle again"
        ) from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            raise BundleError(
                f"{path}: size {st.st_size} bytes, the manifest says {size}; the file is "
                "truncated or was changed: copy the bundle again"
            )
        return sha256_fileobj(fh)


def _walk_files(root: Path) -> Iterator[tuple[str, Path]]:
    """Every non-directory entry under root, sorted, as (posix relpath, path). Does not follow
    directory links, so a link can never pull a folder outside the bundle into it."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        base = Path(dirpath)
        # os.walk lists links to directories in dirnames; treat them as entries to check.
        for name in sorted(filenames + [d for d in dirnames if (base / d).is_symlink()]):
            path = base / name
            yield path.relative_to(root).as_posix(), path


def _safe_relpath(rel: str) -> bool:
    parts = rel.split("/")
    return (
        bool(rel)
        and not rel.startswith("/")
        and "\\" not in rel
        and ".." not in parts
        and ("" not in parts and "." not in parts)
    )


def read_manifest_bytes(root: Path) -> bytes:
    """The exact bytes of `manifest.json`, read once (not through a link)."""
    path = root / MANIFEST_NAME
    if path.is_symlink():
        raise BundleError(f"{path}: a link; the manifest must be a regular file in the bundle")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise BundleError(
            f"{path}: missing; {root} is not a bundle (or was copied only in part); "
            "build one with `expert bundle` and copy the whole folder"
        ) from None
    except OSError as exc:
        raise BundleError(f"{path}: cannot be read ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise BundleError(f"{path}: not a regular file")
        return fh.read()


def read_manifest(root: Path, raw: bytes | None = None) -> dict[str, Any]:
    """Parse and version-check `manifest.json` (or its bytes, `raw`, when already read);
    nothing else is checked here."""
    path = root / MANIFEST_NAME
    raw = read_manifest_bytes(root) if raw is None else raw
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(
            f"{path}: not valid JSON ({exc}); the bundle is corrupt, rebuild it"
        ) from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: expected a JSON object; the bundle is corrupt, rebuild it")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise BundleError(f"{path}: format_version missing or not an integer; rebuild the bundle")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        hint = (
            "upgrade the appliance package to one that reads it"
            if version > max(SUPPORTED_FORMAT_VERSIONS)
            else "rebuild the bundle with this project's `expert bundle`"
        )
        raise BundleError(
            f"{path}: bundle format version {version} is not supported (this appliance reads "
            f"{', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))}); {hint}"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{path}: 'files' missing or empty; rebuild the bundle")
    for rel, entry in files.items():
        if not _safe_relpath(rel) or rel in UNLISTED:
            raise BundleError(f"{path}: file entry {rel!r} is not a safe relative path; rebuild")
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("sha256"), str)
            and len(entry["sha256"]) == 64
            and isinstance(entry.get("size"), int)
            and entry["size"] >= 0
        ):
            raise BundleError(f"{path}: entry for {rel} lacks a valid sha256/size; rebuild")
    return manifest


# --------------------------------------------------------------------------------------------
# Signatures (ed25519 over the exact bytes of manifest.json)


def public_key_id(public_key_raw: bytes) -> str:
    """A short fingerprint of a raw ed25519 public key, stored beside each signature."""
    return hashlib.sha256(public_key_raw).hexdigest()[:16]


def _load_public_key(path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"{path}: cannot read the bundle public key ({exc.strerror})") from None
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise BundleError(
            f"{path}: not a PEM public key; use the .pub file written with the signing key"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(f"{path}: not an ed25519 public key; bundles are signed with ed25519")
    return key


def verify_signature(root: Path, public_key: Path, manifest_bytes: bytes | None = None) -> None:
    """Check `manifest.sig` against `manifest.json` (or the bytes of it already read, which
    are then the bytes the caller goes on to use) with the given PEM public key."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization

    sig_path = root / SIGNATURE_NAME
    key = _load_public_key(public_key)
    try:
        sig = json.loads(sig_path.read_text(encoding="utf-8"))
        if sig.get("algorithm") != SIGNATURE_ALGORITHM:
            raise BundleError(
                f"{sig_path}: algorithm {sig.get('algorithm')!r} is not {SIGNATURE_ALGORITHM}"
            )
        signature = base64.b64decode(sig["signature"], validate=True)
    except BundleError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise BundleError(f"{sig_path}: unreadable or malformed signature file; re-sign") from None
    raw_pub = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    try:
        if manifest_bytes is None:
            manifest_bytes = read_manifest_bytes(root)
        key.verify(signature, manifest_bytes)
    except InvalidSignature:
        signer = sig.get("key_id")
        which = (
            f" (signed with key {signer}, checked with {public_key_id(raw_pub)})"
            if signer and signer != public_key_id(raw_pub)
            else ""
        )
        raise BundleError(
            f"{sig_path}: the signature does not match manifest.json{which}; the bundle was "
            "altered after signing or signed with another key: do not install it"
        ) from None


# --------------------------------------------------------------------------------------------
# Loading


def load_bundle(
    path: Path, *, require_signature: bool = False, public_key: Path | None = None
) -> Bundle:
    """Verify a bundle folder completely and return it; raise BundleError naming the file.

    `path` may be a link (e.g. `<state_dir>/current`); the returned root is the real folder,
    so a server that keeps the Bundle is unaffected when the link is later switched.
    """
    path = Path(path)
    if not path.exists():
        raise BundleError(f"{path}: no such bundle folder; pass the folder `expert bundle` wrote")
    root = path.resolve()
    if not root.is_dir():
        raise BundleError(f"{path}: not a folder; a bundle is a folder with a manifest.json")
    if require_signature and public_key is None:
        raise BundleError(
            f"{root}: a signature is required but no public key was given; set {ENV_PUBLIC_KEY}"
        )
    # One read: the bytes whose signature is checked are the bytes whose file list is used.
    manifest_bytes = read_manifest_bytes(root)
    manifest = read_manifest(root, manifest_bytes)

    sig_path = root / SIGNATURE_NAME
    signed = False
    if sig_path.is_symlink() or (sig_path.exists() and not sig_path.is_file()):
        raise BundleError(f"{sig_path}: must be a regular file")
    if public_key is not None:
        # A configured key means every bundle must carry a valid signature: deleting
        # manifest.sig must not turn a tampered bundle into an accepted unsigned one.
        if not sig_path.is_file():
            raise BundleError(
                f"{sig_path}: missing, and a bundle public key is configured ({public_key}), so "
                "only signed bundles are accepted: build it with `expert bundle --sign-key KEY`"
            )
        verify_signature(root, Path(public_key), manifest_bytes)
        signed = True
    elif require_signature:
        raise BundleError(
            f"{sig_path}: missing; this device requires signed bundles: build the bundle with "
            "`expert bundle --sign-key KEY` (or unset "
            f"{ENV_REQUIRE_SIGNATURE} to accept unsigned ones)"
        )

    listed: dict[str, dict[str, Any]] = manifest["files"]
    found: dict[str, Path] = {}
    for rel, entry_path in _walk_files(root):
        if rel in UNLISTED:
            continue
        st = entry_path.lstat()
        if stat.S_ISLNK(st.st_mode):
            target = entry_path.resolve()
            if not target.is_relative_to(root):
                raise BundleError(
                    f"{entry_path}: a link pointing outside the bundle ({os.readlink(entry_path)}); "
                    "bundles must be self-contained: copy the file in and rebuild"
                )
            if not target.is_file():
                raise BundleError(f"{entry_path}: a link to a missing or non-regular file")
        elif not stat.S_ISREG(st.st_mode):
            raise BundleError(f"{entry_path}: not a regular file; remove it or rebuild the bundle")
        found[rel] = entry_path

    extra = sorted(set(found) - set(listed))
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise BundleError(
            f"{root}: file(s) not in the manifest: {shown}; a bundle is immutable: remove them "
            "or rebuild the bundle"
        )
    missing = sorted(set(listed) - set(found))
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise BundleError(
            f"{root}: file(s) listed in the manifest are missing: {shown}; the copy is "
            "incomplete: copy the whole bundle again"
        )
    # Sizes first: a truncated copy is found without hashing gigabytes.
    for rel, entry in listed.items():
        size = found[rel].stat().st_size
        if size != entry["size"]:
            raise BundleError(
                f"{found[rel]}: size {size} bytes, the manifest says {entry['size']}; the file "
                "is truncated or was changed: copy the bundle again"
            )
    for rel, entry in listed.items():
        if _sha256_checked(found[rel], root, entry["size"]) != entry["sha256"]:
            raise BundleError(
                f"{found[rel]}: sha256 does not match the manifest; the file was altered or "
                "corrupted: copy the bundle again"
            )

    for part in REQUIRED_DIRS:
        if not (root / part).is_dir():
            raise BundleError(
                f"{root / part}: missing; every bundle has {', '.join(REQUIRED_DIRS)}"
            )
    adapters = root / "adapters"
    return Bundle(
        root=root,
        manifest=manifest,
        llm_dir=root / "llm",
        embedder_dir=root / "embedder",
        index_dir=root / "index",
        adapters_dir=adapters if adapters.is_dir() else None,
        signed=signed,
    )


def load_bundle_with_policy(path: Path, policy: SignaturePolicy | None = None) -> Bundle:
    """`load_bundle` with the device's signature policy (default: from the environment)."""
    policy = SignaturePolicy.from_env() if policy is None else policy
    return load_bundle(
        path, require_signature=policy.require_signature, public_key=policy.public_key
    )


def load_current_or_previous(
    path: Path, policy: SignaturePolicy | None = None
) -> tuple[Bundle, str | None]:
    """Load `path`; when it is a state directory's `current` link and fails verification
    (a power cut during an install, a damaged disk), fall back to `previous`.

    Returns the bundle and, after a fallback, a sentence saying what happened (the service
    shows it in /readyz). The fallback is logged at CRITICAL: the box is serving an older
    bundle than the operator installed.
    """
    path = Path(path)
    try:
        return load_bundle_with_policy(path, policy), None
    except BundleError as exc:
        previous = path.parent / PREVIOUS_LINK
        if not (path.name == CURRENT_LINK and path.is_symlink() and previous.is_symlink()):
            raise
        failure = exc
    try:
        bundle = load_bundle_with_policy(previous, policy)
    except BundleError as exc:
        raise BundleError(
            f"{failure}; and the previous bundle failed too ({exc}): install a good bundle with "
            "`install.sh --upgrade-bundle`"
        ) from None
    note = (
        f"the current bundle failed verification ({failure}); serving the previous bundle "
        f"{bundle.id} instead: reinstall the current one, or make the fallback permanent with "
        "`install.sh --rollback`"
    )
    log.critical("BUNDLE FALLBACK: %s", note)
    return bundle, note


# --------------------------------------------------------------------------------------------
# Installing and switching on the device


def _bundles_dir(state_dir: Path) -> Path:
    return Path(state_dir) / BUNDLES_DIR


def _replace_link(link: Path, target: str) -> None:
    """Point `link` at `target` atomically: make a new link beside it, rename it over."""
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)
    _fsync_dir(link.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _link_target_name(link: Path) -> str | None:
    """The bundle folder name a state link points to, or None when there is no link."""
    if not link.is_symlink():
        if link.exists():
            raise BundleError(f"{link}: exists but is not a link; move it away")
        return None
    return Path(os.readlink(link)).name


def _extract_tar(archive: Path, dest: Path) -> Path:
    """Unpack a bundle tarball into dest and return the bundle folder inside it."""
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
    except TypeError:
        # Pythons before 3.11.4 have no extraction filters: without one, a tarball could
        # write outside `dest`. Refuse rather than unpack unfiltered.
        raise BundleError(
            f"{archive}: this Python ({sys.version.split()[0]}) cannot unpack tarballs safely "
            "(tarfile filters need Python >= 3.11.4); upgrade Python, or install from the "
            "unpacked bundle folder"
        ) from None
    except (tarfile.TarError, OSError) as exc:
        raise BundleError(f"{archive}: cannot unpack ({exc}); copy the tarball again") from None
    # The bundle is the tarball's root, its one top-level folder, or the bundle inside a
    # `make package` tarball (parts hold their own manifest.json deeper down, e.g. the index).
    found = [dest / MANIFEST_NAME, *dest.glob(f"*/{MANIFEST_NAME}")]
    found += dest.glob(f"*/bundle/*/{MANIFEST_NAME}")
    candidates = [p.parent for p in found if p.is_file()]
    if len(candidates) != 1:
        raise BundleError(
            f"{archive}: expected exactly one bundle (one manifest.json) inside, found "
            f"{len(candidates)}"
        )
    return candidates[0]


def install_bundle(
    src: Path,
    state_dir: Path,
    *,
    activate_now: bool = False,
    require_signature: bool = False,
    public_key: Path | None = None,
) -> Path:
    """Verify `src` (a bundle folder, a .tar/.tar.gz of one, or a package tarball), copy it into
    `<state_dir>/bundles/`, verify the copy, and return the installed folder.

    Idempotent: installing the same bundle again returns the existing folder; a different
    bundle with the same name and version is refused (bundles are immutable).
    """
    src, state_dir = Path(src), Path(state_dir)
    if not src.exists():
        raise BundleError(f"{src}: no such bundle folder or tarball")
    bundles = _bundles_dir(state_dir)
    bundles.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=bundles))
    try:
        if src.is_dir():
            bundle_src = src.resolve()
        else:
            bundle_src = _extract_tar(src, staging / "unpacked")
        checked = load_bundle(
            bundle_src, require_signature=require_signature, public_key=public_key
        )
        dest = bundles / checked.root.name
        if dest.exists():
            same = (dest / MANIFEST_NAME).is_file() and (
                sha256_file(dest / MANIFEST_NAME) == sha256_file(checked.root / MANIFEST_NAME)
            )
            if not same:
                raise BundleError(
                    f"{dest}: a different bundle with this name and version is installed; "
                    "bundles are immutable: build the new one with a new --version"
                )
            load_bundle(dest, require_signature=require_signature, public_key=public_key)
        else:
            copy = staging / "copy"
            shutil.copytree(checked.root, copy, symlinks=False)
            _make_read_only(copy)
            # Contents on disk before anything points at them: after a power cut `current`
            # must never name truncated files.
            _fsync_tree(copy)
            load_bundle(copy, require_signature=require_signature, public_key=public_key)
            os.rename(copy, dest)
            _fsync_dir(bundles)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if activate_now:
        activate(state_dir, dest.name, require_signature=require_signature, public_key=public_key)
    return dest


def _fsync_tree(root: Path) -> None:
    """fsync every file under root, then every folder, deepest first, root last."""
    dirs = []
    for dirpath, _dirnames, filenames in os.walk(root):
        dirs.append(dirpath)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for dirpath in reversed(dirs):
        _fsync_dir(Path(dirpath))


def _make_read_only(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            p = Path(dirpath, name)
            if not p.is_symlink():
                p.chmod(0o444)
        # Directories stay writable by the owner so old bundles can be removed.
        Path(dirpath).chmod(0o755)


def activate(
    state_dir: Path,
    bundle_name: str,
    *,
    require_signature: bool = False,
    public_key: Path | None = None,
) -> Path:
    """Verify an installed bundle and make it `current`; the old one becomes `previous`."""
    state_dir = Path(state_dir)
    if "/" in bundle_name or bundle_name in ("", ".", ".."):
        raise BundleError(f"{bundle_name!r}: give the bundle folder name, e.g. bundle-plant-1.0.0")
    target = _bundles_dir(state_dir) / bundle_name
    if not target.is_dir():
        installed = ", ".join(list_installed(state_dir)) or "none"
        raise BundleError(
            f"{target}: not installed (installed: {installed}); install it first with "
            "`install.sh --upgrade-bundle` or `expert device install`"
        )
    load_bundle(target, require_signature=require_signature, public_key=public_key)
    current = state_dir / CURRENT_LINK
    old = _link_target_name(current)
    if old == bundle_name:
        return target
    if old is not None:
        _replace_link(state_dir / PREVIOUS_LINK, f"{BUNDLES_DIR}/{old}")
    _replace_link(current, f"{BUNDLES_DIR}/{bundle_name}")
    return target


def rollback(
    state_dir: Path, *, require_signature: bool = False, public_key: Path | None = None
) -> Path:
    """Swap `current` and `previous`; return the bundle folder that is now current."""
    state_dir = Path(state_dir)
    prev = _link_target_name(state_dir / PREVIOUS_LINK)
    if prev is None:
        raise BundleError(f"{state_dir / PREVIOUS_LINK}: no previous bundle to roll back to")
    target = _bundles_dir(state_dir) / prev
    if not target.is_dir():
        raise BundleError(f"{target}: the previous bundle was removed; cannot roll back")
    load_bundle(target, require_signature=require_signature, public_key=public_key)
    cur = _link_target_name(state_dir / CURRENT_LINK)
    _replace_link(state_dir / CURRENT_LINK, f"{BUNDLES_DIR}/{prev}")
    if cur is not None:
        _replace_link(state_dir / PREVIOUS_LINK, f"{BUNDLES_DIR}/{cur}")
    return target


def resolve_current(state_dir: Path) -> Path:
    """The real folder `<state_dir>/current` points to (not verified: use load_bundle)."""
    link = Path(state_dir) / CURRENT_LINK
    if _link_target_name(link) is None:
        raise BundleError(
            f"{link}: no bundle is active; install one with `install.sh --upgrade-bundle FILE` "
            "or pass --bundle DIR"
        )
    target = link.resolve()
    if not target.is_dir():
        raise BundleError(
            f"{link}: points to {target}, which is missing; run install.sh --rollback"
        )
    return target


def current_name(state_dir: Path) -> str | None:
    """The folder name `<state_dir>/current` points to, or None when no bundle is active."""
    return _link_target_name(Path(state_dir) / CURRENT_LINK)


def list_installed(state_dir: Path) -> list[str]:
    bundles = _bundles_dir(state_dir)
    if not bundles.is_dir():
        return []
    return sorted(p.name for p in bundles.iterdir() if p.is_dir() and not p.name.startswith("."))
