"""Request limits and the one place where request bodies are checked.

Every limit is a named constant here. A malformed body (not UTF-8, not JSON, not an
object) is a 400; a well-formed body with a bad field is a 422 whose error names the field
(`param`), as OpenAI-style clients expect; an over-large body is a 413. Nothing a client
sends can reach the model unchecked, and no check can raise anything but ApiError.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_MESSAGES = 64
MAX_MESSAGE_CHARS = 32_000
MAX_TOTAL_CHARS = 128_000
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 64
MAX_TEMPERATURE = 2.0
MAX_SEED = 2**63 - 1
MAX_K = 20
MAX_QUERY_CHARS = 4_000
MAX_EMBEDDING_INPUTS = 64
MAX_EMBEDDING_CHARS = 8_000
MAX_FILTERS = 16
MAX_MODEL_CHARS = 200
MAX_JSON_DEPTH = 32
_ABS_PATH = re.compile(r"(?<![\w.])/(?:[\w.@+-]+/)+[\w.@+-]*")
ROLES = ("system", "developer", "user", "assistant")
RETRIEVAL_MODES = ("hybrid", "dense", "keyword")


class ApiError(Exception):
    """An error answered as an OpenAI-style JSON body: {"error": {message, type, param, code}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type
        self.headers = dict(headers or {})

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def scrub(message: str) -> str:
    """Exception text for a client: absolute file paths are replaced by <path>."""
    return _ABS_PATH.sub("<path>", message)


def invalid(param: str, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(422, f"{param}: {message}", param=param, code=code)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _depth(value: Any, limit: int) -> bool:
    """True if value nests deeper than limit (iterative, so it cannot overflow the stack)."""
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if d > limit:
            return True
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return False


def parse_json_object(raw: bytes) -> dict:
    """Body bytes -> dict, or a 400 ApiError saying what is wrong with the body."""
    if not raw:
        raise ApiError(
            400, "the request body is empty; send a JSON object", param="body", code="empty_body"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(
            400,
            f"the request body is not valid UTF-8 (byte {exc.start}); send UTF-8 JSON",
            param="body",
            code="invalid_utf8",
        ) from None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ApiError(
            400, "the request body nests too deeply", param="body", code="invalid_json"
        ) from None
    except ValueError as exc:
        raise ApiError(
            400, f"the request body is not valid JSON: {exc}", param="body", code="invalid_json"
        ) from None
    if not isinstance(value, dict):
        raise ApiError(
            400,
            f"the request body must be a JSON object, not {type(value).__name__}",
            param="body",
            code="invalid_json",
        )
    if _depth(value, MAX_JSON_DEPTH):
        raise ApiError(
            400, f"the request body nests deeper than {MAX_JSON_DEPTH} levels", param="body"
        )
    return value


# --- field readers: each returns the value or raises a 422 naming the field ------------------


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def text_value(value: Any, param: str, *, max_chars: int, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise invalid(param, f"must be a string, got {_type_name(value)}", "invalid_type")
    if len(value) > max_chars:
        raise invalid(
            param, f"is {len(value)} characters long; the limit is {max_chars}", "too_long"
        )
    if not allow_empty and not value.strip():
        raise invalid(param, "must not be empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid(
            param, "contains an unpaired surrogate (\\ud800-\\udfff); send valid Unicode"
        ) from None
    return value


def int_value(value: Any, param: str, *, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(param, f"must be an integer, got {_type_name(value)}", "invalid_type")
    if isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer()):
            raise invalid(param, f"must be an integer, got {value}", "invalid_type")
        value = int(value)
    if not (lo <= value <= hi):
        raise invalid(param, f"must be between {lo} and {hi}, got {value}")
    return value


def number_value(value: Any, param: str, *, lo: float, hi: float, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(param, f"must be a number, got {_type_name(value)}", "invalid_type")
    value = float(value)
    if not math.isfinite(value):
        raise invalid(param, f"must be a finite number, got {value}")
    if value < lo or value > hi or (lo_open and value == lo):
        bound = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
        raise invalid(param, f"must be in {bound}, got {value}")
    return value


def bool_value(value: Any, param: str) -> bool:
    if not isinstance(value, bool):
        raise invalid(param, f"must be true or false, got {_type_name(value)}", "invalid_type")
    return value


def filters_value(value: Any, param: str = "filters") -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid(param, f"must be an object, got {_type_name(value)}", "invalid_type")
    if len(value) > MAX_FILTERS:
        raise invalid(param, f"has {len(value)} keys; the limit is {MAX_FILTERS}")
    for key, v in value.items():
        text_value(key, f"{param}.key", max_chars=100)
        items = v if isinstance(v, list) else [v]
        if len(items) > 100:
            raise invalid(f"{param}.{key}", "lists at most 100 values")
        for item in items:
            if isinstance(item, str):
                text_value(item, f"{param}.{key}", max_chars=1000, allow_empty=True)
            elif not isinstance(item, int | float | bool) or (
                isinstance(item, float) and not math.isfinite(item)
            ):
                raise invalid(
                    f"{param}.{key}",
                    "must be a string, number, boolean or a list of them",
                    "invalid_type",
                )
    return value


def _content(value: Any, param: str) -> str:
    """Message content: a string, or OpenAI's list of {"type": "text", "text": ...} parts."""
    if isinstance(value, str):
        return text_value(value, param, max_chars=MAX_MESSAGE_CHARS, allow_empty=True)
    if isinstance(value, list):
        texts = []
        for i, part in enumerate(value[:MAX_MESSAGES]):
            p = f"{param}[{i}]"
            if not isinstance(part, dict) or part.get("type") != "text":
                raise invalid(
                    p, 'only {"type": "text", "text": ...} parts are supported', "unsupported"
                )
            texts.append(
                text_value(
                    part.get("text"), f"{p}.text", max_chars=MAX_MESSAGE_CHARS, allow_empty=True
                )
            )
        joined = "\n".join(texts)
        if len(joined) > MAX_MESSAGE_CHARS:
            raise invalid(param, f"is longer than {MAX_MESSAGE_CHARS} characters", "too_long")
        return joined
    raise invalid(
        param, f"must be a string or a list of text parts, got {_type_name(value)}", "invalid_type"
    )


# --- requests ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatRequest:
    question: str
    history: list[dict]
    system_prompt: str | None
    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...]
    seed: int | None
    stream: bool
    include_usage: bool
    model: str | None
    retrieval: bool | None
    k: int
    filters: dict | None = field(default=None)


def chat_request(
    body: dict, *, max_tokens_default: int, max_tokens_limit: int, top_k: int
) -> ChatRequest:
    messages = body.get("messages")
    if messages is None:
        raise invalid("messages", "is required", "missing")
    if not isinstance(messages, list):
        raise invalid("messages", f"must be an array, got {_type_name(messages)}", "invalid_type")
    if not messages:
        raise invalid("messages", "must hold at least one message")
    if len(messages) > MAX_MESSAGES:
        raise invalid(
            "messages", f"holds {len(messages)} messages; the limit is {MAX_MESSAGES}", "too_many"
        )
    system: list[str] = []
    turns: list[dict] = []
    total = 0
    for i, m in enumerate(messages):
        p = f"messages[{i}]"
        if not isinstance(m, dict):
            raise invalid(p, f"must be an object, got {_type_name(m)}", "invalid_type")
        role = m.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise invalid(
                f"{p}.role",
                f"must be one of {', '.join(ROLES)}, got {role!r}"[:200],
                "invalid_role",
            )
        if "content" not in m or m["content"] is None:
            raise invalid(f"{p}.content", "is required", "missing")
        content = _content(m["content"], f"{p}.content")
        total += len(content)
        if role in ("system", "developer"):
            if content.strip():
                system.append(content)
        else:
            turns.append({"role": role, "content": content})
    if total > MAX_TOTAL_CHARS:
        raise invalid(
            "messages",
            f"hold {total} characters in all; the limit is {MAX_TOTAL_CHARS}",
            "too_long",
        )
    if not turns or turns[-1]["role"] != "user":
        raise invalid(
            "messages", "the last message (after any system messages) must be from the user"
        )
    question = turns[-1]["content"]
    if not question.strip():
        raise invalid(f"messages[{len(messages) - 1}].content", "the question must not be empty")

    max_tokens = max_tokens_default
    for name in ("max_completion_tokens", "max_tokens"):
        if body.get(name) is not None:
            max_tokens = int_value(body[name], name, lo=1, hi=max_tokens_limit)
    temperature = 0.0
    if body.get("temperature") is not None:
        temperature = number_value(body["temperature"], "temperature", lo=0.0, hi=MAX_TEMPERATURE)
    top_p = 1.0
    if body.get("top_p") is not None:
        top_p = number_value(body["top_p"], "top_p", lo=0.0, hi=1.0)
        if top_p == 0.0:  # "only the most likely token": greedy
            temperature, top_p = 0.0, 1.0
    stop: tuple[str, ...] = ()
    raw_stop = body.get("stop")
    if raw_stop is not None:
        items = [raw_stop] if isinstance(raw_stop, str) else raw_stop
        if not isinstance(items, list):
            raise invalid(
                "stop",
                f"must be a string or an array of strings, got {_type_name(raw_stop)}",
                "invalid_type",
            )
        if len(items) > MAX_STOP_SEQUENCES:
            raise invalid(
                "stop", f"holds {len(items)} sequences; the limit is {MAX_STOP_SEQUENCES}"
            )
        stop = tuple(text_value(s, "stop", max_chars=MAX_STOP_CHARS) for s in items)
    seed = None
    if body.get("seed") is not None:
        seed = int_value(body["seed"], "seed", lo=0, hi=MAX_SEED)
    stream = bool_value(body["stream"], "stream") if body.get("stream") is not None else False
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise invalid("stream_options", "must be an object", "invalid_type")
        if options.get("include_usage") is not None:
            include_usage = bool_value(options["include_usage"], "stream_options.include_usage")
    if body.get("n") is not None and int_value(body["n"], "n", lo=1, hi=1) != 1:
        raise invalid("n", "only n=1 is supported")
    for name in ("frequency_penalty", "presence_penalty"):
        if body.get(name) is not None:
            value = number_value(body[name], name, lo=-2.0, hi=2.0)
            if value != 0.0:
                raise invalid(name, "is not supported (only 0)", "unsupported")
    for name in ("tools", "functions", "tool_choice", "logit_bias"):
        if body.get(name) not in (None, [], {}, "none"):
            raise invalid(name, "is not supported by this appliance", "unsupported")
    if body.get("logprobs") not in (None, False):
        raise invalid("logprobs", "is not supported by this appliance", "unsupported")
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        raise invalid("response_format", 'only {"type": "text"} is supported', "unsupported")
    model = None
    if body.get("model") is not None:
        model = text_value(body["model"], "model", max_chars=MAX_MODEL_CHARS)
    retrieval = None  # not given: retrieve when the service has an index
    if body.get("retrieval") is not None:
        retrieval = bool_value(body["retrieval"], "retrieval")
    k = int_value(body["k"], "k", lo=1, hi=MAX_K) if body.get("k") is not None else top_k
    return ChatRequest(
        question=question,
        history=turns[:-1],
        system_prompt="\n\n".join(system) or None,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        stop=stop,
        seed=seed,
        stream=stream,
        include_usage=include_usage,
        model=model,
        retrieval=retrieval,
        k=k,
        filters=filters_value(body.get("filters")),
    )


@dataclass(frozen=True)
class EmbeddingsRequest:
    inputs: list[str]
    base64: bool
    model: str | None


def embeddings_request(body: dict) -> EmbeddingsRequest:
    raw = body.get("input")
    if raw is None:
        raise invalid("input", "is required", "missing")
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list):
        raise invalid(
            "input",
            f"must be a string or an array of strings, got {_type_name(raw)}",
            "invalid_type",
        )
    if not items:
        raise invalid("input", "must hold at least one string")
    if len(items) > MAX_EMBEDDING_INPUTS:
        raise invalid(
            "input", f"holds {len(items)} items; the limit is {MAX_EMBEDDING_INPUTS}", "too_many"
        )
    texts = []
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise invalid(
                f"input[{i}]", "must be a string (token arrays are not supported)", "invalid_type"
            )
        texts.append(text_value(item, f"input[{i}]", max_chars=MAX_EMBEDDING_CHARS))
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise invalid("encoding_format", f"must be 'float' or 'base64', got {fmt!r}"[:200])
    model = None
    if body.get("model") is not None:
        model = text_value(body["model"], "model", max_chars=MAX_MODEL_CHARS)
    if body.get("dimensions") is not None:
        int_value(body["dimensions"], "dimensions", lo=1, hi=65536)
    return EmbeddingsRequest(texts, fmt == "base64", model)


@dataclass(frozen=True)
class RetrieveRequest:
    query: str
    k: int
    filters: dict | None
    mode: str


def retrieve_request(body: dict, *, top_k: int) -> RetrieveRequest:
    if body.get("query") is None:
        raise invalid("query", "is required", "missing")
    query = text_value(body["query"], "query", max_chars=MAX_QUERY_CHARS)
    k = int_value(body["k"], "k", lo=1, hi=MAX_K) if body.get("k") is not None else top_k
    mode = body.get("mode", "hybrid")
    if mode not in RETRIEVAL_MODES:
        raise invalid("mode", f"must be one of {', '.join(RETRIEVAL_MODES)}, got {mode!r}"[:200])
    return RetrieveRequest(query, k, filters_value(body.get("filters")), mode)


MAX_DOCUMENTS_PER_REQUEST = 20
MAX_DOCUMENT_NAME_CHARS = 200


def documents_request(body: dict) -> list[dict]:
    """POST /v1/documents: one document object or {"documents": [...]} -> DocumentInput kwargs.

    A document is {"name": "notes.md", "text": "..."} or {"name": "manual.pdf",
    "data_base64": "..."}, with optional "title", "metadata" (an object) and "doc_id".
    """
    import base64
    import binascii

    items = body.get("documents", [body] if "name" in body else None)
    if items is None:
        raise invalid(
            "documents",
            'is required: send {"name": ..., "text": ...} or {"documents": [...]}',
            "missing",
        )
    if not isinstance(items, list) or not items:
        raise invalid("documents", "must be a non-empty array of document objects", "invalid_type")
    if len(items) > MAX_DOCUMENTS_PER_REQUEST:
        raise invalid(
            "documents",
            f"holds {len(items)} documents; the limit is {MAX_DOCUMENTS_PER_REQUEST}",
            "too_many",
        )
    out = []
    for i, item in enumerate(items):
        p = f"documents[{i}]" if "documents" in body else ""
        at = lambda name, p=p: f"{p}.{name}" if p else name  # noqa: E731
        if not isinstance(item, dict):
            raise invalid(p or "body", "must be an object", "invalid_type")
        spec: dict = {
            "name": text_value(item.get("name"), at("name"), max_chars=MAX_DOCUMENT_NAME_CHARS)
        }
        has_text, has_data = item.get("text") is not None, item.get("data_base64") is not None
        if has_text == has_data:
            raise invalid(at("text"), "give exactly one of `text` or `data_base64`", "missing")
        if has_text:
            spec["text"] = text_value(item["text"], at("text"), max_chars=64 << 20)
        else:
            raw = text_value(item["data_base64"], at("data_base64"), max_chars=96 << 20)
            try:
                spec["data"] = base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError):
                raise invalid(at("data_base64"), "is not valid base64") from None
        if item.get("title") is not None:
            spec["title"] = text_value(item["title"], at("title"), max_chars=500)
        if item.get("doc_id") is not None:
            spec["doc_id"] = text_value(item["doc_id"], at("doc_id"), max_chars=128)
        if item.get("metadata") is not None:
            spec["metadata"] = filters_value(item["metadata"], at("metadata"))
        out.append(spec)
    return out
