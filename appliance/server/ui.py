"""The terminal UI: one page (HTML, CSS, JS in this package; nothing external).

The page's texts come from the message catalogue (appliance/i18n.py) in the language chosen,
in this order, by `?lang=` in the page's address, the `ui_language` setting
(EXPERT_UI_LANGUAGE), or the browser's Accept-Language. index.html is a Jinja template: the
static texts are filled in on the server, and the catalogue travels in the page as a JSON data
block (never executed) for the texts app.js writes itself.
"""

from __future__ import annotations

import json
from pathlib import Path

from flask import Blueprint, Response, render_template_string, request, send_from_directory

from appliance.i18n import LANGUAGES, negotiate, ui_messages
from appliance.server.context import service

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


def ui_language() -> str:
    asked = request.args.get("lang", "").strip().lower()
    if asked in LANGUAGES:
        return asked
    setting = getattr(service().config, "ui_language", "") or ""
    if setting:
        return setting
    return negotiate(request.headers.get("Accept-Language"))


def _json_for_script(data: object) -> str:
    """JSON that cannot end its <script> element early."""
    text = json.dumps(data, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@bp.get("/")
def index():
    language = ui_language()
    messages = ui_messages(language)
    template = (STATIC / "index.html").read_text(encoding="utf-8")
    html = render_template_string(
        template, lang=language, m=messages, messages_json=_json_for_script(messages)
    )
    resp = Response(html, mimetype="text/html")
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["Cache-Control"] = "no-cache"
    resp.headers["Vary"] = "Accept-Language"
    resp.headers["Content-Language"] = language
    return resp


@bp.get("/ui/<path:name>")
def asset(name: str):
    if name == "index.html":  # a template: only ever served rendered
        return index()
    return _send(name)
