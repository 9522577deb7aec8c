"""A minimal OpenAI-compatible HTTP server for llama.cpp: the HTTP peer of benchmarks/http_bench.py.

Run: `.venv/bin/python -m benchmarks.llama_http --gguf FILE [--port 8090] [--threads 2]`

llama-cpp-python's own server (`llama_cpp.server`) needs fastapi, uvicorn, sse-starlette and
starlette-context, which the benchmark environment does not carry; this is the equivalent
path for one model: POST /v1/chat/completions (streaming SSE or not) runs
`Llama.create_chat_completion` (the GGUF's chat template, llama.cpp's longest-common-prefix
KV reuse between requests, as that server does with its single Llama object), one request at
a time; GET /health answers when the model is loaded. Loopback only: it refuses any other bind
address.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def make_handler(llm, lock: threading.Lock):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # the stream ends when the connection closes

        def log_message(self, *args) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            if self.path == "/health":
                self._json(200, {"status": "ok"})
            else:
                self._json(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:
            if self.path != "/v1/chat/completions":
                self._json(404, {"error": {"message": "not found"}})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                messages = body["messages"]
            except (ValueError, KeyError) as exc:
                self._json(400, {"error": {"message": f"bad request: {exc}"}})
                return
            kwargs = {
                "messages": messages,
                "max_tokens": int(body.get("max_tokens") or 256),
                "temperature": float(body.get("temperature", 0.0)),
                "top_p": float(body.get("top_p", 1.0)),
                "top_k": 1 if float(body.get("temperature", 0.0)) == 0 else 40,
                "repeat_penalty": 1.0,
                "stream": bool(body.get("stream")),
            }
            with lock:
                if not kwargs["stream"]:
                    self._json(200, llm.create_chat_completion(**kwargs))
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                completion = 0
                for chunk in llm.create_chat_completion(**kwargs):
                    if (chunk["choices"][0].get("delta") or {}).get("content"):
                        completion += 1
                    self._event(chunk)
                usage = {"completion_tokens": completion, "created": int(time.time())}
                self._event({"object": "chat.completion.chunk", "choices": [], "usage": usage})
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

        def _event(self, payload: dict) -> None:
            self.wfile.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
            self.wfile.flush()

        def _json(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.llama_http", description=__doc__)
    parser.add_argument("--gguf", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--no-flash-attn", dest="flash_attn", action="store_false")
    args = parser.parse_args(argv)
    if args.host not in LOOPBACK:
        raise SystemExit(f"--host {args.host}: this benchmark server binds to loopback only")
    from llama_cpp import Llama

    llm = Llama(
        model_path=args.gguf,
        n_ctx=args.n_ctx,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        flash_attn=args.flash_attn,
        verbose=False,
    )
    server = ThreadingHTTPServer((args.host, args.port), make_handler(llm, threading.Lock()))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
