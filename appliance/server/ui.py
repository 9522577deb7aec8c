"""The terminal UI: one static page (HTML, CSS, JS in this package; nothing external)."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, send_from_directory

STATIC = Path(__file__).with_name("static")
# No inline script or style and nothing from elsewhere: the page works on an air-gapped box
# and a stored passage cannot inject script into it.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

bp = Blueprint("ui", __name__)


def _send(name: str):
    resp = send_from_directory(STATIC, name, max_age=0)
    resp.headers["Content-Security-Policy"] = CSP
    return resp


@bp.get("/")
def index():
    return _send("index.html")


@bp.get("/ui/<path:name>")
def asset(name: str):
    return _send(name)
