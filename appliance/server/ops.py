"""Operations endpoints: liveness, readiness and Prometheus metrics.

/healthz and /readyz take no slot, no lock held by generation, and no API key, so a busy or
reloading service still answers its probes at once.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from appliance.server.context import service

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    svc = service()
    if not svc.ready:
        resp = jsonify({"status": "draining" if svc.draining else "loading"})
        resp.status_code = 503
        return resp
    rt = svc.runtime
    return jsonify(
        {
            "status": "ready",
            "model": rt.name,
            "slots": svc.slots.slots,
            "slots_busy": svc.slots.busy,
            "queue_depth": svc.slots.waiting,
            "queue_limit": svc.slots.max_queue,
            "quality_gate": rt.quality_gate,
            # Set when `current` failed verification at start and `previous` is served.
            "bundle_fallback": rt.fallback,
        }
    )


@bp.get("/metrics")
def metrics():
    return Response(service().metrics.render(), mimetype="text/plain; version=0.0.4")
