# Run from the repository root:  python3 examples/apache/tools/fetch_corpus.py [--deb FILE] [--check]
"""Reproduce examples/apache/docs/ from the pinned Debian package apache2-doc.

The corpus is a subset of the Apache HTTP Server 2.4 reference manual as Debian ships it
(package apache2-doc, version PINNED_VERSION): the English reference pages of the core, the
MPMs and a dozen modules. Those pages list directives one after another, each with the same
Syntax / Default / Context / Status / Module table, so neighbouring defaults are easy to
confuse: the material the answer-quality work is measured on.

Steps: `apt-get download apache2-doc=VERSION` (a package registry; no other network), check the
.deb's sha256, extract it with `dpkg-deb -x`, copy PAGES into docs/ and the Debian copyright
file next to them, then check every copied page against SOURCE.json. `--deb FILE` uses a .deb
you already have (e.g. on an air-gapped box); `--check` only verifies the committed copy.
Exit status 1 on any mismatch, with the file named.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
# `check` is re-exported for check_dataset.py.
from debian_corpus import DebianCorpus, check, main  # noqa: E402, F401

HERE = Path(__file__).resolve().parent.parent  # examples/apache

PACKAGE = "apache2-doc"
PINNED_VERSION = "2.4.68-1~deb12u1"
DEB_SHA256 = "cee8fe80ffb5de2744cd690c3d795b489e43a1c44c4e3a634c521642f22d7835"
MANUAL = Path("usr/share/doc/apache2-doc/manual/en/mod")
COPYRIGHT = Path("usr/share/doc/apache2-doc/copyright")

# The reference pages kept (file stems under manual/en/mod/). Chosen for directives with
# numeric defaults and similar neighbours (timeouts, limits, sizes), plus a few procedures.
PAGES = (
    "core",
    "mpm_common",
    "event",
    "worker",
    "mod_alias",
    "mod_cache",
    "mod_deflate",
    "mod_dir",
    "mod_expires",
    "mod_headers",
    "mod_http2",
    "mod_log_config",
    "mod_proxy",
    "mod_reqtimeout",
    "mod_rewrite",
    "mod_ssl",
    "mod_status",
)


CORPUS = DebianCorpus(
    here=HERE,
    package=PACKAGE,
    version=PINNED_VERSION,
    deb_sha256=DEB_SHA256,
    manual=MANUAL,
    copyright=COPYRIGHT,
    pages=PAGES,
    description=__doc__.split("\n\n")[0],
)

if __name__ == "__main__":
    raise SystemExit(main(CORPUS))
