# Run from the repository root:  python3 examples/debian-es/tools/fetch_corpus.py [--deb FILE] [--check]
"""Reproduce examples/debian-es/docs/ from the pinned Debian package debian-reference-es.

The corpus is five chapters of the Spanish translation of the Debian Reference (Osamu Aoki and
translators), exactly as Debian 12 ships them in debian-reference-es PINNED_VERSION
(/usr/share/debian-reference/chNN.es.html): package management, system initialisation,
authentication, network configuration and network applications. Reference material with many
similar entries (file paths, ports, commands, table rows), written by people outside this project.

Steps: `apt-get download debian-reference-es=VERSION` (a package registry; no other network),
check the .deb's sha256, extract it with `dpkg-deb -x`, copy PAGES into docs/ and the Debian
copyright file next to them, then check every copied page against SOURCE.json. `--deb FILE` uses
a .deb you already have (e.g. on an air-gapped box); `--check` only verifies the committed copy.
Exit status 1 on any mismatch, with the file named.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent  # examples/debian-es
DOCS = HERE / "docs"
SOURCE_JSON = HERE / "SOURCE.json"

PACKAGE = "debian-reference-es"
PINNED_VERSION = "2.100"
DEB_SHA256 = "a59b68c96f83d3cf29a476c847aee38364764603ea62eee592791e0a843a269e"
MANUAL = Path("usr/share/debian-reference")
COPYRIGHT = Path("usr/share/doc/debian-reference-es/copyright")

# Chapters kept (ch02-ch06, 0.75 MB): mostly translated (the long ch01 tutorial and the partly
# untranslated later chapters are left out), full of tables of files, ports and commands.
PAGES = ("ch02", "ch03", "ch04", "ch05", "ch06")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def download(tmp: Path) -> Path:
    if shutil.which("apt-get") is None:
        sys.exit("apt-get not found: run this on Debian/Ubuntu, or pass --deb FILE")
    spec = f"{PACKAGE}={PINNED_VERSION}"
    proc = subprocess.run(["apt-get", "download", spec], cwd=tmp, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(
            f"`apt-get download {spec}` failed:\n{proc.stderr.strip()}\n"
            "Run `apt-get update` (Debian 12 sources) and try again, or pass --deb FILE."
        )
    debs = sorted(tmp.glob(f"{PACKAGE}_*.deb"))
    if len(debs) != 1:
        sys.exit(f"expected one {PACKAGE} .deb in {tmp}, found {[d.name for d in debs]}")
    return debs[0]


def extract(deb: Path, tmp: Path) -> Path:
    digest = sha256(deb)
    if digest != DEB_SHA256:
        sys.exit(f"{deb}: sha256 {digest} is not the pinned {DEB_SHA256} ({PINNED_VERSION})")
    if shutil.which("dpkg-deb") is None:
        sys.exit("dpkg-deb not found: install the dpkg package")
    root = tmp / "x"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def check() -> list[str]:
    """Problems of the committed copy against SOURCE.json (empty when it matches)."""
    if not SOURCE_JSON.is_file():
        return [f"{SOURCE_JSON} is missing; run this script without --check"]
    meta = json.loads(SOURCE_JSON.read_text(encoding="utf-8"))
    problems = []
    for name, digest in meta["files"].items():
        path = HERE / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif sha256(path) != digest:
            problems.append(f"{name}: sha256 differs from SOURCE.json")
    extra = {str(p.relative_to(HERE)) for p in DOCS.glob("*.html")} - set(meta["files"])
    problems.extend(f"{name}: not in SOURCE.json" for name in sorted(extra))
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--deb", type=Path, help=f"a downloaded {PACKAGE}_{PINNED_VERSION}_all.deb")
    ap.add_argument("--check", action="store_true", help="only verify the committed copy")
    args = ap.parse_args()
    if args.check:
        problems = check()
        for p in problems:
            print(p, file=sys.stderr)
        print("OK" if not problems else f"{len(problems)} problem(s)")
        return 1 if problems else 0

    with tempfile.TemporaryDirectory(prefix="debian-reference-es-") as t:
        tmp = Path(t)
        deb = args.deb.resolve() if args.deb else download(tmp)
        root = extract(deb, tmp)
        DOCS.mkdir(parents=True, exist_ok=True)
        files: dict[str, str] = {}
        for stem in PAGES:
            src = root / MANUAL / f"{stem}.es.html"
            if not src.is_file():
                sys.exit(f"{src.relative_to(root)} is not in the package")
            dst = DOCS / f"{stem}.html"
            shutil.copyfile(src, dst)
            files[str(dst.relative_to(HERE))] = sha256(dst)
        shutil.copyfile(root / COPYRIGHT, HERE / "COPYRIGHT.debian")
        files["COPYRIGHT.debian"] = sha256(HERE / "COPYRIGHT.debian")
    meta = {
        "package": PACKAGE,
        "version": PINNED_VERSION,
        "deb_sha256": DEB_SHA256,
        "manual_path": str(MANUAL),
        "pages": list(PAGES),
        "files": files,
    }
    SOURCE_JSON.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    problems = check()
    for p in problems:
        print(p, file=sys.stderr)
    print(f"{len(PAGES)} pages from {PACKAGE} {PINNED_VERSION} in {DOCS}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
