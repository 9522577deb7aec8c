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

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
# `check` is re-exported for check_dataset.py.
from debian_corpus import DebianCorpus, check, main  # noqa: E402, F401

HERE = Path(__file__).resolve().parent.parent  # examples/debian-es

PACKAGE = "debian-reference-es"
PINNED_VERSION = "2.100"
DEB_SHA256 = "a59b68c96f83d3cf29a476c847aee38364764603ea62eee592791e0a843a269e"
MANUAL = Path("usr/share/debian-reference")
COPYRIGHT = Path("usr/share/doc/debian-reference-es/copyright")

# Chapters kept (ch02-ch06, 0.75 MB): mostly translated (the long ch01 tutorial and the partly
# untranslated later chapters are left out), full of tables of files, ports and commands.
PAGES = ("ch02", "ch03", "ch04", "ch05", "ch06")


CORPUS = DebianCorpus(
    here=HERE,
    package=PACKAGE,
    version=PINNED_VERSION,
    deb_sha256=DEB_SHA256,
    manual=MANUAL,
    copyright=COPYRIGHT,
    pages=PAGES,
    suffix=".es.html",
    description=__doc__.split("\n\n")[0],
)

if __name__ == "__main__":
    raise SystemExit(main(CORPUS))
