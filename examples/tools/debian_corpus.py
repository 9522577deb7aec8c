"""Fetch a corpus of pages from a pinned Debian documentation package: the shared code of
examples/apache/tools/fetch_corpus.py and examples/debian-es/tools/fetch_corpus.py, which each
name their package, version, hash, pages and licence file in a `DebianCorpus`.

Steps: `apt-get download PACKAGE=VERSION` (a package registry; no other network), check the
.deb's sha256, extract it with `dpkg-deb -x`, copy the pages into docs/ and the Debian copyright
file next to them, then check every copied page against SOURCE.json. `--deb FILE` uses a .deb
already at hand (air-gapped box); `--check` only verifies the committed copy. Exit status 1 on
any mismatch, with the file named.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for appliance/

from appliance.common.fsutil import sha256_file  # noqa: E402


@dataclass(frozen=True)
class DebianCorpus:
    here: Path  # examples/<corpus>
    package: str
    version: str
    deb_sha256: str
    manual: Path  # folder of the pages inside the package
    copyright: Path
    pages: tuple[str, ...]
    suffix: str = ".html"  # a page's file name in the package: <stem><suffix>
    description: str = ""

    @property
    def docs(self) -> Path:
        return self.here / "docs"

    @property
    def source_json(self) -> Path:
        return self.here / "SOURCE.json"


def download(c: DebianCorpus, tmp: Path) -> Path:
    if shutil.which("apt-get") is None:
        sys.exit("apt-get not found: run this on Debian/Ubuntu, or pass --deb FILE")
    spec = f"{c.package}={c.version}"
    proc = subprocess.run(["apt-get", "download", spec], cwd=tmp, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(
            f"`apt-get download {spec}` failed:\n{proc.stderr.strip()}\n"
            "Run `apt-get update` (Debian 12 sources) and try again, or pass --deb FILE."
        )
    debs = sorted(tmp.glob(f"{c.package}_*.deb"))
    if len(debs) != 1:
        sys.exit(f"expected one {c.package} .deb in {tmp}, found {[d.name for d in debs]}")
    return debs[0]


def extract(c: DebianCorpus, deb: Path, tmp: Path) -> Path:
    digest = sha256_file(deb)
    if digest != c.deb_sha256:
        sys.exit(f"{deb}: sha256 {digest} is not the pinned {c.deb_sha256} ({c.version})")
    if shutil.which("dpkg-deb") is None:
        sys.exit("dpkg-deb not found: install the dpkg package")
    root = tmp / "x"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def check(c: DebianCorpus) -> list[str]:
    """Problems of the committed copy against SOURCE.json (empty when it matches)."""
    if not c.source_json.is_file():
        return [f"{c.source_json} is missing; run this script without --check"]
    meta = json.loads(c.source_json.read_text(encoding="utf-8"))
    problems = []
    for name, digest in meta["files"].items():
        path = c.here / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif sha256_file(path) != digest:
            problems.append(f"{name}: sha256 differs from SOURCE.json")
    extra = {str(p.relative_to(c.here)) for p in c.docs.glob("*.html")} - set(meta["files"])
    problems.extend(f"{name}: not in SOURCE.json" for name in sorted(extra))
    return problems


def main(c: DebianCorpus, argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=c.description)
    ap.add_argument("--deb", type=Path, help=f"a downloaded {c.package}_{c.version}_all.deb")
    ap.add_argument("--check", action="store_true", help="only verify the committed copy")
    args = ap.parse_args(argv)
    if args.check:
        problems = check(c)
        for p in problems:
            print(p, file=sys.stderr)
        print("OK" if not problems else f"{len(problems)} problem(s)")
        return 1 if problems else 0

    with tempfile.TemporaryDirectory(prefix=f"{c.package}-") as t:
        tmp = Path(t)
        deb = args.deb.resolve() if args.deb else download(c, tmp)
        root = extract(c, deb, tmp)
        c.docs.mkdir(parents=True, exist_ok=True)
        files: dict[str, str] = {}
        for stem in c.pages:
            src = root / c.manual / f"{stem}{c.suffix}"
            if not src.is_file():
                sys.exit(f"{src.relative_to(root)} is not in the package")
            dst = c.docs / f"{stem}.html"
            shutil.copyfile(src, dst)
            files[str(dst.relative_to(c.here))] = sha256_file(dst)
        shutil.copyfile(root / c.copyright, c.here / "COPYRIGHT.debian")
        files["COPYRIGHT.debian"] = sha256_file(c.here / "COPYRIGHT.debian")
    meta = {
        "package": c.package,
        "version": c.version,
        "deb_sha256": c.deb_sha256,
        "manual_path": str(c.manual),
        "pages": list(c.pages),
        "files": files,
    }
    c.source_json.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    problems = check(c)
    for p in problems:
        print(p, file=sys.stderr)
    print(f"{len(c.pages)} pages from {c.package} {c.version} in {c.docs}")
    return 1 if problems else 0
