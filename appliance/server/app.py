"""The Flask app factory: blueprints, authentication, limits and error mapping in one place.

`create_app(config)` loads the configured bundle; tests and the evaluation code pass their
own components (`generator=`, `retriever=`, `embedder=`) instead. Every error leaves as an
OpenAI-style JSON body with no file path and no traceback; the log gets the details, with
control characters escaped so a client cannot forge log lines.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from appliance.generation.base import Generator
from appliance.server.api import bp as api_bp
from appliance.server.auth import KeyStore, require_keys_for_bind
from appliance.server.config import ServeConfig, host_allowed, is_loopback
from appliance.server.context import (
    EXTENSION,
    escape_for_log,
    log,
    record_request,
)
from appliance.server.ops import bp as ops_bp
from appliance.server.runtime import Runtime, Service, answer_policy, load_runtime
from appliance.server.ui import bp as ui_bp
from appliance.server.validation import ApiError

# Routes answered without an API key: liveness/readiness probes and the UI's static shell
# (it holds no data; every API call it makes carries the key the operator types in).
PUBLIC_ENDPOINTS = frozenset({"ops.healthz", "ops.readyz", "ui.index", "ui.asset"})


def error_response(err: ApiError) -> Response:
    resp = jsonify(err.body())
    resp.status_code = err.status
    for k, v in err.headers.items():
        resp.headers[k] = v
    return resp


def check_bind_security(config: ServeConfig, keys: KeyStore) -> None:
    require_keys_for_bind(config.host, keys, config.keys_path)


JSON_METHODS = frozenset({"POST", "PUT", "PATCH"})


def check_host_and_origin(config: ServeConfig) -> None:
    """403 for a Host that does not name this service (DNS rebinding) and for an Origin that
    is neither the service's own nor configured (a page elsewhere, in the terminal's browser).
    Clients that are not browsers send no Origin and are unaffected."""
    host = request.host or ""
    if host.startswith("["):  # [v6]:port
        hostname = host.partition("]")[0] + "]"
    elif host.count(":") == 1:  # name:port, v4:port
        hostname = host.partition(":")[0]
    else:
        hostname = host
    if not host_allowed(config, hostname):
        raise ApiError(
            403,
            f"Host {escape_for_log(host, 200)!r} does not name this service; use its address, "
            "or add the name to allowed_hosts (EXPERT_ALLOWED_HOSTS)",
            type="permission_error",
            code="host_not_allowed",
        )
    origin = request.headers.get("Origin")
    if origin is None:
        return
    own = f"{request.scheme}://{host}".lower()
    if origin.lower().rstrip("/") in (own, *config.origins):
        return
    raise ApiError(
        403,
        f"Origin {escape_for_log(origin, 200)!r} may not call this service from a browser; "
        "add it to allowed_origins (EXPERT_ALLOWED_ORIGINS) if it should",
        type="permission_error",
        code="origin_not_allowed",
    )


def check_json_content_type() -> None:
    """A body sent to the JSON API must say it is JSON: a browser sends text/plain, form and
    multipart bodies across sites without asking the server first (no CORS preflight)."""
    if request.method not in JSON_METHODS or not (request.endpoint or "").startswith("api."):
        return
    if request.mimetype != "application/json":
        raise ApiError(
            415,
            f"Content-Type {escape_for_log(request.content_type or '(none)', 200)!r} is not "
            "accepted: send the body as JSON with `Content-Type: application/json`",
            param="Content-Type",
            code="unsupported_media_type",
        )


def create_app(
    config: ServeConfig,
    *,
    generator: Generator | None = None,
    retriever: object | None = None,
    embedder: object | None = None,
    loader: Callable[[ServeConfig], Runtime] | None = None,
) -> Flask:
    """The service as a WSGI app. Without `generator`, the configured bundle is loaded (and
    SIGHUP reloads it); with one, those components are served and `loader`, if given,
    is what a reload calls."""
    keys = KeyStore.load(config.keys_path)
    check_bind_security(config, keys)
    if generator is None:
        loader = loader or load_runtime
        runtime = loader(config)
    else:
        runtime = Runtime(
            generator=generator,
            retriever=retriever,
            embedder=embedder if embedder is not None else getattr(retriever, "embedder", None),
            name=generator.model_id,
            policy=answer_policy(config, None),
        )
    svc = Service(config, runtime, loader, keys)

    app = Flask(__name__, static_folder=None)
    app.debug = config.debug
    app.config.update(
        MAX_CONTENT_LENGTH=config.max_body_bytes,
        PROPAGATE_EXCEPTIONS=False,
        TRAP_HTTP_EXCEPTIONS=False,
        JSON_SORT_KEYS=False,
    )
    app.json.sort_keys = False
    app.json.ensure_ascii = False
    app.extensions[EXTENSION] = svc

    app.register_blueprint(api_bp)
    app.register_blueprint(ops_bp)
    app.register_blueprint(ui_bp)

    @app.before_request
    def _start() -> None:
        g.t_start = time.perf_counter()
        g.streaming = False
        g.key_name = None
        check_host_and_origin(config)
        if request.endpoint in PUBLIC_ENDPOINTS:
            return
        keys = svc.keys
        if not keys.enabled and is_loopback(config.host):
            check_json_content_type()
            return
        header = request.headers.get("Authorization", "")
        presented = header[7:].strip() if header[:7].lower() == "bearer " else None
        presented = presented or request.headers.get("X-API-Key")
        name = keys.check(presented)
        if name is None:
            raise ApiError(
                401,
                "a valid API key is required: send `Authorization: Bearer <key>`",
                type="authentication_error",
                code="invalid_api_key",
                headers={"WWW-Authenticate": 'Bearer realm="industry-expert"'},
            )
        g.key_name = name
        check_json_content_type()

    @app.after_request
    def _finish(resp: Response) -> Response:
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        resp.headers.setdefault("Cache-Control", "no-store")
        if not getattr(g, "streaming", False):
            record_request(svc, resp.status_code)
        return resp

    @app.errorhandler(ApiError)
    def _api_error(err: ApiError):
        return error_response(err)

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(_err):
        return error_response(
            ApiError(
                413,
                f"the request body is larger than {config.max_body_bytes} bytes",
                param="body",
                code="body_too_large",
            )
        )

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException):
        messages = {
            404: "no such route; the API is under /v1 (chat/completions, models, embeddings, "
            "retrieve, documents), the UI at /",
            405: f"method {request.method} is not allowed on this route",
        }
        message = messages.get(err.code or 500, err.description or err.name)
        return error_response(
            ApiError(err.code or 500, message, code=err.name.lower().replace(" ", "_"))
        )

    @app.errorhandler(Exception)
    def _unexpected(err: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(
            ApiError(500, "internal error; the service log has the details", type="server_error")
        )

    return app
