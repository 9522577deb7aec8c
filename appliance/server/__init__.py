"""The appliance's HTTP service: OpenAI-compatible API, grounded answers, terminal UI.

`create_app(config, *, generator=None, retriever=None)` builds the Flask app;
`appliance.server.serve` runs it under waitress (`expert serve`, appliance/commands/serve.py).

Routes (API key, when keys exist, on all but /healthz, /readyz and the UI's static files):
    POST   /v1/chat/completions   OpenAI chat (messages, max_tokens, temperature, top_p, stop,
                                  seed, stream, stream_options.include_usage), plus `retrieval`
                                  (bool), `k` and `filters`; answers carry `sources`,
                                  `abstained` and `abstain_reason`
    GET    /v1/models             the bundle, and `<bundle>:<adapter>` per runtime adapter
    POST   /v1/embeddings         OpenAI embeddings (float or base64)
    POST   /v1/retrieve           {query, k, filters, mode} -> ranked passages with scores
    GET    /v1/documents          documents in the service's index copy
    POST   /v1/documents          {name, text | data_base64, title?, metadata?, doc_id?}
    DELETE /v1/documents/<id>
    GET    /healthz, /readyz      liveness; readiness (503 while loading or draining)
    GET    /metrics               Prometheus text format
    GET    /                      the terminal UI
"""

from appliance.server.app import create_app
from appliance.server.config import ServeConfig

__all__ = ["ServeConfig", "create_app"]
