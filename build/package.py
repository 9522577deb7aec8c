"""`make package`: one tarball that installs the appliance on an air-gapped x86-64 Linux box.

Run: `expert package --bundle dist/bundle-plant-1.0.0 --out dist/` (build/commands/package.py)
Tests: `.venv/bin/pytest -m slow tests/build/test_package.py`

The box has no network, so everything it needs travels in the tarball:

    industry-expert-<name>-<version>-linux-x86_64/
      install.sh            installs offline; also --upgrade-bundle and --rollback
      README.txt            the operator's instructions
      wheelhouse/           every wheel of this project's `appliance` extra (no torch)
      bundle/bundle-.../    the verified bundle
      systemd/              the hardened unit
      keys/                 the bundle public key, when the bundle is signed
      package.json          what is inside and which Python it targets
      SHA256SUMS            checked by install.sh before it touches the system
      SHA256SUMS.sig        ed25519 signature of SHA256SUMS (with --sign-key); install.sh checks
                            it with the key already configured on the box or given by the
                            operator, never with the key inside the package

The wheels are built for this machine's Python and CPU architecture, which must match the
box's (a Debian 12 box has Python 3.11). hnswlib ships only as source; its setup.py compiles
with -march=native unless HNSWLIB_NO_NATIVE is set, which would make a wheel that crashes
with SIGILL on an older CPU, so it is built here without it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from pathlib import Path

from appliance.bundle import load_bundle
from appliance.common.fsutil import atomic_file, sha256_file
from appliance.errors import UserFacingError

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
UNIT_NAME = "industry-expert.service"
SIGNING_PUB = "bundle-signing.pub"
# Never on the device: the appliance runs without them (tests/appliance/test_no_torch.py).
FORBIDDEN_WHEELS = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "optimum")
# Wheels compiled from source for the package, with the environment that keeps them portable.
SOURCE_BUILDS = {"hnswlib": {"HNSWLIB_NO_NATIVE": "1"}}

README = """\
Industry expert appliance: {bundle} ({created})

Install (as root, no network needed; Python {python}+ with the venv module, x86-64 Linux):
    sudo ./install.sh
  options: --prefix DIR (default /opt/industry-expert), --state-dir DIR (default
  /var/lib/industry-expert), --user NAME (default industry-expert), --conf-dir DIR (default
  /etc/industry-expert), --public-key FILE.pub (require signed bundles), --no-systemd, --help.
  Configuration: /etc/industry-expert/env (EXPERT_HOST, EXPERT_PORT, EXPERT_API_KEYS_FILE, ...),
  then `systemctl restart industry-expert`.

Switch to a new bundle (verified first; the switch is atomic; the service reloads):
    sudo ./install.sh --upgrade-bundle bundle-plant-1.1.0.tar
  NEW may be a bundle folder, a tarball of one (tar -cf bundle-plant-1.1.0.tar -C dist
  bundle-plant-1.1.0), or a newer package tarball (only its bundle is taken).
Go back to the bundle served before:
    sudo ./install.sh --rollback

Check: systemctl status industry-expert; journalctl -u industry-expert;
       curl http://127.0.0.1:8080/healthz
"""


def _python_tag() -> str:
    return f"cp{sys.version_info.major}{sys.version_info.minor}"


def _run(cmd: list[str], *, env: dict[str, str] | None = None, what: str) -> None:
    log.info("%s: %s", what, " ".join(cmd))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise UserFacingError(
            f"{what} failed (exit {proc.returncode}):\n{tail}\nThe build machine needs access to "
            "a package index (or a pip cache holding these wheels) to make a package."
        )


def _appliance_requirements(project_root: Path) -> list[str]:
    pyproject = project_root / "pyproject.toml"
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        return list(data["project"]["optional-dependencies"]["appliance"])
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise UserFacingError(
            f"{pyproject}: cannot read the `appliance` extra ({exc}); is this the project root?"
        ) from None


def _wheel_name(path: Path) -> str:
    return re.sub(r"[-_.]+", "-", path.name.split("-")[0]).lower()


def build_wheelhouse(
    dest: Path,
    *,
    project_root: Path = REPO,
    wheel_cache: Path | None = None,
    python: str = sys.executable,
) -> list[Path]:
    """Fill `dest` with this project's wheel and every wheel its `appliance` extra needs.

    `wheel_cache` keeps the wheels compiled from source (hnswlib) between runs.
    """
    dest.mkdir(parents=True, exist_ok=True)
    pip = [python, "-m", "pip", "--disable-pip-version-check"]
    with tempfile.TemporaryDirectory(prefix="wheel-") as tmp:
        _run([*pip, "wheel", "--no-deps", "-q", "-w", tmp, str(project_root)], what="project wheel")
        (project_wheel,) = Path(tmp).glob("*.whl")
        shutil.copy2(project_wheel, dest / project_wheel.name)
    project_wheel = dest / project_wheel.name

    for req in _appliance_requirements(project_root):
        name = re.split(r"[=<>!~\[; ]", req, maxsplit=1)[0].lower()
        if name not in SOURCE_BUILDS:
            continue
        cached = sorted((wheel_cache or dest).glob(f"{name}-*-{_python_tag()}-*.whl"))
        pin = req.split("==", 1)[1].strip() if "==" in req else None
        cached = [w for w in cached if pin is None or w.name.split("-")[1] == pin]
        if not cached:
            out = Path(tempfile.mkdtemp(prefix=f"{name}-"))
            try:
                env = {**os.environ, **SOURCE_BUILDS[name]}
                _run(
                    [
                        *pip,
                        "wheel",
                        "--no-deps",
                        "--no-cache-dir",
                        "--no-binary",
                        name,
                        "-q",
                        "-w",
                        str(out),
                        req,
                    ],
                    env=env,
                    what=f"portable {name} wheel",
                )
                cached = sorted(out.glob("*.whl"))
                if wheel_cache is not None:
                    wheel_cache.mkdir(parents=True, exist_ok=True)
                    cached = [Path(shutil.copy2(w, wheel_cache / w.name)) for w in cached]
                else:
                    cached = [Path(shutil.copy2(w, dest / w.name)) for w in cached]
            finally:
                shutil.rmtree(out, ignore_errors=True)
        for wheel in cached:
            if wheel.parent != dest:
                shutil.copy2(wheel, dest / wheel.name)

    # The wheels already in dest (the portable builds) win over the index's sdists.
    _run(
        [
            *pip,
            "wheel",
            "-q",
            "-w",
            str(dest),
            "--find-links",
            str(dest),
            "--prefer-binary",
            f"{project_wheel}[appliance]",
        ],
        what="appliance wheels",
    )
    wheels = sorted(dest.glob("*.whl"))
    bad = [w.name for w in wheels if _wheel_name(w) in FORBIDDEN_WHEELS]
    if bad:
        raise UserFacingError(
            f"the wheelhouse would ship {bad}: the appliance extra must not pull them in; "
            "fix pyproject.toml's `appliance` dependencies"
        )
    for w in wheels:
        if w.name.endswith("-linux_x86_64.whl") and _wheel_name(w) not in SOURCE_BUILDS:
            log.warning("%s was compiled on this machine; check it runs on the target CPU", w.name)
    return wheels


def _reset_owner(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def write_checksums(top: Path, signing_key: Path | None = None) -> Path:
    """Write `top/SHA256SUMS` (every file under top) and, with a signing key, its ed25519
    signature `SHA256SUMS.sig` (raw 64 bytes, as `openssl pkeyutl -verify -rawin` reads it)."""
    sums = [
        f"{sha256_file(p)}  {p.relative_to(top).as_posix()}"
        for p in sorted(top.rglob("*"))
        if p.is_file() and p.name not in ("SHA256SUMS", "SHA256SUMS.sig")
    ]
    path = top / "SHA256SUMS"
    path.write_text("\n".join(sums) + "\n", encoding="utf-8")
    if signing_key is not None:
        (top / "SHA256SUMS.sig").write_bytes(_sign(path.read_bytes(), signing_key))
    return path


def _sign(data: bytes, signing_key: Path) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(Path(signing_key).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise UserFacingError(f"{signing_key}: cannot read the signing key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UserFacingError(f"{signing_key}: not an ed25519 private key")
    return key.sign(data)


def make_package(
    bundle_dir: Path,
    out_dir: Path,
    *,
    project_root: Path = REPO,
    wheel_cache: Path | None = None,
    public_key: Path | None = None,
    wheelhouse: Path | None = None,
    signing_key: Path | None = None,
) -> Path:
    """Write `out_dir/industry-expert-<name>-<version>-linux-x86_64.tar` and return it.

    `wheelhouse`: a folder of wheels made earlier by `build_wheelhouse`, to reuse instead of
    building one. `public_key`: the bundle must verify with it, and the device will require
    signed bundles from then on. `signing_key`: signs SHA256SUMS (the same ed25519 key that
    signs bundles, so a box that trusts one trusts the other).
    """
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise UserFacingError(
            f"make package builds wheels for this machine ({platform.system()} "
            f"{platform.machine()}); run it on x86-64 Linux with the target's Python version"
        )
    bundle = load_bundle(
        Path(bundle_dir), require_signature=public_key is not None, public_key=public_key
    )
    name = f"industry-expert-{bundle.name}-{bundle.version}-linux-x86_64"
    out_dir = Path(out_dir)
    final = out_dir / f"{name}.tar"
    if final.exists():
        raise UserFacingError(f"{final}: exists; remove it or build a bundle with a new version")
    out_dir.mkdir(parents=True, exist_ok=True)
    unit = project_root / "systemd" / UNIT_NAME
    install_sh = project_root / "systemd" / "install.sh"
    for needed in (unit, install_sh):
        if not needed.is_file():
            raise UserFacingError(f"{needed}: missing from the project; restore it from git")

    with tempfile.TemporaryDirectory(prefix=f".{name}.staging-", dir=out_dir) as staging_dir:
        staging = Path(staging_dir)
        top = staging / name
        top.mkdir()
        if wheelhouse is not None:
            shutil.copytree(wheelhouse, top / "wheelhouse")
            wheels = sorted((top / "wheelhouse").glob("*.whl"))
            if not any(_wheel_name(w) == "industry-expert" for w in wheels):
                raise UserFacingError(f"{wheelhouse}: holds no industry_expert wheel")
        else:
            wheels = build_wheelhouse(
                top / "wheelhouse", project_root=project_root, wheel_cache=wheel_cache
            )
        shutil.copytree(bundle.root, top / "bundle" / bundle.root.name)
        (top / "systemd").mkdir()
        shutil.copy2(unit, top / "systemd" / UNIT_NAME)
        shutil.copy2(install_sh, top / "install.sh")
        (top / "install.sh").chmod(0o755)
        if public_key is not None:
            (top / "keys").mkdir()
            shutil.copy2(public_key, top / "keys" / SIGNING_PUB)
        created = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        info = {
            "package_format": 1,
            "created": created,
            "bundle": bundle.root.name,
            "bundle_signed": public_key is not None,
            "python": _python_tag(),
            "python_min": f"{sys.version_info.major}.{sys.version_info.minor}",
            "machine": platform.machine(),
            "wheels": [w.name for w in wheels],
        }
        (top / "package.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        (top / "README.txt").write_text(
            README.format(bundle=bundle.root.name, created=created, python=info["python_min"]),
            encoding="utf-8",
        )
        write_checksums(top, signing_key)
        # A package is never overwritten (refused above; atomic_file refuses a late arrival).
        with atomic_file(final, overwrite=False) as partial:
            with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
                tar.add(top, arcname=name, filter=_reset_owner)
    return final
