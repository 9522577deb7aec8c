"""The OpenAI-compatible API: chat completions (streaming or not), models, embeddings, and
the appliance's own retrieval endpoint.

Chat answers are grounded (appliance.answering): the response carries `sources` (the
numbered passages, with document, section, page, chunk id and scores) and `abstained`
beside the usual OpenAI fields; the official `openai` client reads both (`extra_body` sends
`retrieval`, `k` and `filters`).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import secrets
import time

import numpy as np
from flask import Blueprint, Response, g, jsonify, request

from appliance.answering import AnswerStream, ContextOverflowError, prepare
from appliance.documents.limits import LimitExceeded
from appliance.errors import UserFacingError
from appliance.generation.base import GenerationParams
from appliance.retrieval.versions import IndexLockedError
from appliance.server.context import RequestInfo, record_request, service
from appliance.server.slots import Overloaded
from appliance.server.validation import (
    ApiError,
    chat_request,
    documents_request,
    embeddings_request,
    parse_json_object,
    retrieve_request,
    scrub,
)

log = logging.getLogger("appliance.server")
bp = Blueprint("api", __name__)
DOC_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _body() -> dict:
    return parse_json_object(request.get_data(cache=False))


def _sse(payload: dict | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


@bp.get("/v1/models")
def models():
    return jsonify({"object": "list", "data": list(service().models())})


@bp.post("/v1/chat/completions")
def chat_completions():
    svc = service()
    cfg = svc.config
    req = chat_request(
        _body(),
        max_tokens_default=cfg.max_tokens_default,
        max_tokens_limit=cfg.max_tokens_limit,
        top_k=cfg.top_k,
    )
    rt = svc.runtime  # this request keeps this runtime to its end, whatever reloads happen
    adapter = rt.adapter_for(req.model)
    use_retrieval = req.retrieval if req.retrieval is not None else rt.retriever is not None
    if use_retrieval and rt.retriever is None:
        raise ApiError(
            422,
            "retrieval: this service has no document index; send retrieval: false",
            param="retrieval",
            code="unsupported",
        )
    if req.max_tokens >= rt.generator.context_length:
        raise ApiError(
            400,
            f"max_tokens ({req.max_tokens}) must be below the model's context "
            f"({rt.generator.context_length} tokens)",
            param="max_tokens",
            code="context_length_exceeded",
        )
    params = GenerationParams(
        max_new_tokens=req.max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        seed=req.seed,
        stop=req.stop,
        adapter=adapter,
    )
    info = RequestInfo.current()
    deadline = time.monotonic() + cfg.request_timeout_s
    slot = _acquire_slot(svc)
    svc.metrics.queue_wait.observe(slot.waited_s)
    held_from = time.perf_counter()
    try:
        prepared = prepare(
            req.question,
            req.history,
            generator=rt.generator,
            retriever=rt.retriever,
            params=params,
            k=req.k,
            filters=req.filters,
            use_retrieval=use_retrieval,
            policy=rt.policy,
            system_prompt=req.system_prompt,
        )
    except ContextOverflowError as exc:
        slot.release()
        raise ApiError(400, str(exc), param="messages", code="context_length_exceeded") from None
    except (UserFacingError, ValueError) as exc:
        slot.release()
        param = "filters" if req.filters else "messages"
        raise ApiError(422, scrub(f"{param}: {exc}"), param=param) from None
    except BaseException:
        slot.release()
        raise
    if use_retrieval:
        svc.metrics.retrieval.observe(prepared.retrieval_s)
    stream = AnswerStream(prepared, rt.generator, deadline=deadline)
    completion_id = "chatcmpl-" + secrets.token_hex(12)
    created = int(time.time())
    model = req.model or rt.name

    def finish(first_at: float | None) -> None:
        result = stream.result
        slot.release()
        svc.slots.record_hold(time.perf_counter() - held_from)
        if first_at is not None:
            svc.metrics.ttft.observe(first_at - info.t_start)
        if result is None:
            return
        svc.metrics.tokens.inc("prompt", by=result.prompt_tokens)
        svc.metrics.tokens.inc("completion", by=result.completion_tokens)
        if result.abstained:
            svc.metrics.abstentions.inc(result.abstain_reason or "model")
        if result.grounding:
            svc.metrics.grounding.inc(result.grounding)
        decode_s = result.generation_s - (result.first_token_s or 0.0)
        if result.completion_tokens > 1 and decode_s > 0:
            svc.metrics.tokens_per_s.observe((result.completion_tokens - 1) / decode_s)

    if not req.stream:
        first_at = None
        try:
            for _ in stream:
                if first_at is None:
                    first_at = time.perf_counter()
        finally:
            stream.close()
            finish(first_at)
        result = stream.result
        return jsonify(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "system_fingerprint": rt.name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": result.text},
                        "finish_reason": result.finish_reason,
                        "logprobs": None,
                    }
                ],
                "usage": _usage(
                    result.prompt_tokens, result.completion_tokens, result.cached_tokens
                ),
                "sources": [s.to_dict() for s in result.sources],
                "abstained": result.abstained,
                "abstain_reason": result.abstain_reason,
                **_grounding(result),
            }
        )

    def chunk(delta: dict, finish_reason: str | None = None, **extra) -> dict:
        return {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": rt.name,
            "choices": [
                {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
            ],
            **extra,
        }

    def events():
        first_at = None
        status_note = ""
        try:
            yield _sse(
                chunk(
                    {"role": "assistant", "content": ""},
                    sources=[s.to_dict() for s in prepared.sources],
                    abstained=prepared.abstained,
                )
            )
            for delta in stream:
                if first_at is None:
                    first_at = time.perf_counter()
                yield _sse(chunk({"content": delta}))
            result = stream.result
            yield _sse(
                chunk(
                    {},
                    result.finish_reason,
                    sources=[s.to_dict() for s in result.sources],
                    abstained=result.abstained,
                    abstain_reason=result.abstain_reason,
                    # When the check replaced the model's words, `answer` is the final text.
                    answer=result.text,
                    **_grounding(result),
                )
            )
            if req.include_usage:
                usage = _usage(result.prompt_tokens, result.completion_tokens, result.cached_tokens)
                yield _sse({**chunk({}), "choices": [], "usage": usage})
            yield _sse("[DONE]")
        except GeneratorExit:
            svc.metrics.disconnects.inc()
            status_note = " (client disconnected)"
            raise
        except Exception:
            log.exception("generation failed mid-stream")
            status_note = " (failed mid-stream)"
            err = ApiError(
                500, "generation failed; the service log has the details", type="server_error"
            )
            yield _sse(err.body())
            yield _sse("[DONE]")
        finally:
            stream.close()
            finish(first_at)
            record_request(svc, 200, info, status_note)

    g.streaming = True
    return Response(
        events(),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _acquire_slot(svc, pool=None, what: str = "generation"):
    """A slot of `pool` (default: generation), or a 503 with Retry-After (draining, queue
    full, wait timed out)."""
    pool = svc.slots if pool is None else pool
    if svc.draining:
        raise ApiError(
            503,
            "the service is shutting down; retry shortly",
            type="server_busy",
            code="draining",
            headers={"Retry-After": "5"},
        )
    try:
        return pool.acquire(timeout=svc.config.queue_timeout_s)
    except Overloaded as exc:
        svc.metrics.rejected.inc(exc.reason)
        why = (
            f"all {what} slots are busy and the queue is full"
            if exc.reason == "queue_full"
            else f"no {what} slot became free within {svc.config.queue_timeout_s:g} s"
        )
        raise ApiError(
            503,
            f"{why}; retry after {exc.retry_after_s} s",
            type="server_busy",
            code=exc.reason,
            headers={"Retry-After": str(exc.retry_after_s)},
        ) from None


def _grounding(result) -> dict:
    """The grounding verdict (supported | quoted | abstained; null without retrieval) and its
    evidence: passage number, character span in that passage's text, and the sentence."""
    return {
        "grounding": result.grounding,
        "evidence": [e.to_dict() for e in result.evidence],
    }


def _usage(prompt: int, completion: int, cached: int = 0) -> dict:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        # OpenAI's field: prompt tokens served from the prefix cache, not processed again
        "prompt_tokens_details": {"cached_tokens": cached},
    }


@bp.post("/v1/embeddings")
def embeddings():
    svc = service()
    req = embeddings_request(_body())
    rt = svc.runtime
    if rt.embedder is None:
        raise ApiError(404, "this service has no embedder", code="unsupported")
    model_id = getattr(rt.embedder, "model_id", "embedder")
    if req.model is not None and req.model not in (model_id, rt.name):
        raise ApiError(
            404,
            f"model {req.model!r} is not served here; use {model_id!r}",
            param="model",
            code="model_not_found",
        )
    with _acquire_slot(svc, svc.cpu_slots, "embedding/retrieval"):
        vectors = np.asarray(rt.embedder.embed(req.inputs), dtype=np.float32)
        tokens = sum(rt.embedder.count_tokens(t) for t in req.inputs)
    data = []
    for i, v in enumerate(vectors):
        value = (
            base64.b64encode(v.astype("<f4").tobytes()).decode("ascii")
            if req.base64
            else v.tolist()
        )
        data.append({"object": "embedding", "index": i, "embedding": value})
    return jsonify(
        {
            "object": "list",
            "data": data,
            "model": model_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


@bp.post("/v1/retrieve")
def retrieve():
    svc = service()
    req = retrieve_request(_body(), top_k=svc.config.top_k)
    rt = svc.runtime
    if rt.retriever is None:
        raise ApiError(404, "this service has no document index", code="unsupported")
    t0 = time.perf_counter()
    try:
        with _acquire_slot(svc, svc.cpu_slots, "embedding/retrieval"):
            passages = rt.retriever.search(req.query, k=req.k, filters=req.filters, mode=req.mode)
    except (UserFacingError, ValueError) as exc:
        raise ApiError(422, scrub(f"filters: {exc}"), param="filters") from None
    svc.metrics.retrieval.observe(time.perf_counter() - t0)
    data = []
    for rank, p in enumerate(passages, start=1):
        data.append(
            {
                "rank": rank,
                "chunk_id": p.chunk_id,
                "doc_id": p.doc_id,
                "document": p.path,
                "title": p.title,
                "section": p.section,
                "page": p.page,
                "text": p.text,
                "score": p.score,
                "dense_score": p.dense_score,
                "keyword_score": p.keyword_score,
                "metadata": dict(p.metadata or {}),
            }
        )
    return jsonify({"object": "list", "query": req.query, "mode": req.mode, "data": data})


def _index(rt):
    if rt.retriever is None or not hasattr(rt.retriever, "add_documents"):
        raise ApiError(404, "this service has no writable document index", code="unsupported")
    return rt.retriever


@bp.get("/v1/documents")
def list_documents():
    retriever = _index(service().runtime)
    return jsonify({"object": "list", "data": retriever.documents()})


@bp.post("/v1/documents")
def add_documents():
    """Add or replace documents in the service's copy of the index; searchable on return."""
    from appliance.retrieval import DocumentInput

    svc = service()
    request.max_content_length = svc.config.max_document_bytes
    specs = documents_request(_body())
    rt = svc.runtime
    retriever = _index(rt)
    try:
        inputs = [DocumentInput(**spec, limits=svc.config.parse_limits) for spec in specs]
    except UserFacingError as exc:
        raise ApiError(422, scrub(f"documents: {exc}"), param="documents") from None
    # Embedding a manual is heavy CPU work: it takes a generation slot like an answer does.
    slot = _acquire_slot(svc)
    try:
        report = retriever.add_documents(inputs)
    except IndexLockedError as exc:
        raise _locked(exc) from None
    except LimitExceeded as exc:
        raise ApiError(
            422, scrub(f"documents: {exc}"), param="documents", code="limit_exceeded"
        ) from None
    except UserFacingError as exc:
        raise ApiError(422, scrub(f"documents: {exc}"), param="documents") from None
    finally:
        slot.release()
    resp = jsonify(
        {
            "object": "documents.update",
            "added": report.added,
            "replaced": report.replaced,
            "skipped": [{"name": n, "reason": scrub(r)} for n, r in report.skipped],
            "chunks": report.chunks,
            "index_version": report.version,
        }
    )
    resp.status_code = 201 if report.added or report.replaced else 422
    return resp


def _locked(exc: Exception) -> ApiError:
    """Another writer holds the index: a conflict to retry, not a bad request."""
    return ApiError(
        409,
        scrub(f"documents: {exc}"),
        type="conflict_error",
        code="index_locked",
        headers={"Retry-After": "5"},
    )


@bp.delete("/v1/documents/<doc_id>")
def delete_document(doc_id: str):
    svc = service()
    retriever = _index(svc.runtime)
    if not DOC_ID.match(doc_id):
        raise ApiError(422, "doc_id: use 1-128 letters, digits, '.', '_' or '-'", param="doc_id")
    try:
        with _acquire_slot(svc, svc.cpu_slots, "embedding/retrieval"):
            existed = retriever.delete_document(doc_id)
    except IndexLockedError as exc:
        raise _locked(exc) from None
    except UserFacingError as exc:
        raise ApiError(422, scrub(f"doc_id: {exc}"), param="doc_id") from None
    if not existed:
        raise ApiError(404, f"no document with id {doc_id!r}", param="doc_id", code="not_found")
    return jsonify({"object": "document.deleted", "id": doc_id, "deleted": True})
