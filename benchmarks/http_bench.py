"""The served path over HTTP: `expert serve` against llama.cpp behind an OpenAI-style server.

Run (all suites):  `expert bench --bundle var/bundles/bundle-plant-0.1.0 --work var/work`
Run (this suite):  .venv/bin/python -m benchmarks.http_bench --bundle DIR [--gguf FILE]

Three servers on 127.0.0.1, each in its own process, driven by one streaming client
(POST /v1/chat/completions, `stream: true`, greedy, `retrieval: false` for ours so both get the
same messages and therefore the same prompt):
- ours: `expert serve --bundle B` (the service as shipped, prefix cache on),
- ours with `--prefix-cache-tokens 0` (the same service without the prefix cache),
- llama.cpp: benchmarks/llama_http.py on the GGUF the generation suite chose as the fastest
  peer of equal or better quality (its raw results), else the Q4_0 file, twice: with its
  OpenMP threads spinning between operators (its default, OMP_WAIT_POLICY unset: the fastest
  on a quiet box) and sleeping (OMP_WAIT_POLICY=PASSIVE: the faster one when other work holds
  the cores). Whichever is faster in the run is the peer to beat; both rows are recorded.
Each round sends, to every server in a rotating order, a fresh conversation (an ~800-token
user message of plant documents and a question; rounds alternate two documents so only the
system prompt is shared with the previous request) and then its follow-up turn (the
conversation so far plus a new question). Measured: time to first token from the request,
decode tokens/s, and for ours the `usage.prompt_tokens_details.cached_tokens` the service
reports (the prompt tokens its prefix cache supplied).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.processes import chat_events, child_env, free_port, status_kib, wait_ready
from benchmarks.records import make_record, skipped_record, summarize

log = logging.getLogger(__name__)

SUITE = "generation"
REPO = Path(__file__).resolve().parents[1]
FOLLOW_UP = "And what must be checked after the work is done?"
QUESTION = "Which steps does the procedure above require, in order?"


def _documents(plant: Path | None, n_words: int) -> list[str]:
    docs = sorted((Path(plant) / "docs").glob("*.md")) if plant else []
    words = " ".join(p.read_text(encoding="utf-8", errors="replace") for p in docs).split()
    if not words:
        from benchmarks.generation_config import FALLBACK_TEXT

        words = (FALLBACK_TEXT * 40).split()
    while len(words) < 3 * n_words:
        words = words + words
    return [" ".join(words[:n_words]), " ".join(words[len(words) // 2 : len(words) // 2 + n_words])]


def _stream(url: str, messages: list[dict], max_tokens: int, headers: dict) -> dict:
    """One streaming chat request; times from the request to each content chunk."""
    body = {
        "messages": messages,
        "stream": True,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream_options": {"include_usage": True},
        "retrieval": False,
    }
    t0 = time.perf_counter()
    times: list[float] = []
    text, usage = "", {}
    for event in chat_events(url, body, headers, timeout_s=300):
        usage = event.get("usage") or usage
        for choice in event.get("choices") or []:
            delta = (choice.get("delta") or {}).get("content")
            if delta:
                times.append(time.perf_counter() - t0)
                text += delta
    if not times:
        raise RuntimeError(f"{url} streamed no text")
    tokens = int(usage.get("completion_tokens") or len(times))
    span = times[-1] - times[0]
    return {
        "ttft_s": times[0],
        "decode_tok_s": (tokens - 1) / span if span > 0 and tokens > 1 else float("nan"),
        "tokens": tokens,
        "text": text,
        "cached_tokens": ((usage.get("prompt_tokens_details") or {}).get("cached_tokens")),
        "prompt_tokens": usage.get("prompt_tokens"),
    }


def _start_ours(bundle: Path, state: Path, threads: int, cache_tokens: int | None):
    port = free_port()
    cmd = [sys.executable, "-m", "appliance.cli", "serve", "--bundle", str(bundle),
           "--state-dir", str(state), "--host", "127.0.0.1", "--port", str(port),
           "--slots", "1", "--threads", str(threads)]  # fmt: skip
    if cache_tokens is not None:
        cmd += ["--prefix-cache-tokens", str(cache_tokens)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=child_env())
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url, "/readyz")
    return proc, url


def _start_llama(gguf: Path, threads: int, n_ctx: int, passive: bool = False):
    port = free_port()
    cmd = [sys.executable, "-m", "benchmarks.llama_http", "--gguf", str(gguf), "--port",
           str(port), "--threads", str(threads), "--n-ctx", str(n_ctx)]  # fmt: skip
    env = {**child_env(), **({"OMP_WAIT_POLICY": "PASSIVE"} if passive else {})}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url, "/health")
    return proc, url


def _peak_mb(pid: int) -> float | None:
    kib = status_kib(pid, ("VmHWM",)).get("VmHWM")
    return None if kib is None else kib * 1024 / 1e6


def _chosen_peer(out: Path | None, ggufs: dict) -> str | None:
    """The generation suite's equal-quality verdict peer (its raw results), else Q4_0."""
    raw_file = Path(out) / "raw" / "generation_bench.json" if out else None
    if raw_file is not None and raw_file.is_file():
        try:
            raw = json.loads(raw_file.read_text())
            chosen = (raw.get("verdict") or {}).get("peer")
            if chosen in ggufs:
                return chosen
        except ValueError:
            pass
    return "llama.cpp Q4_0" if "llama.cpp Q4_0" in ggufs else next(iter(ggufs), None)


def run(
    quick: bool = False,
    *,
    bundle: Path | None = None,
    work: Path | None = None,
    plant: Path | None = None,
    threads: int | None = None,
    gguf: Path | None = None,
    out: Path | None = None,
    spinning: bool = True,
) -> list[dict]:
    """`spinning` is accepted like every suite's but changes nothing here: the service runs as
    shipped, and llama.cpp runs with both of its thread wait policies."""
    from benchmarks.generation_bench import gguf_peers
    from benchmarks.machine import usable_cores

    threads = threads or usable_cores()
    if bundle is None or not (Path(bundle) / "manifest.json").is_file():
        return [skipped_record(SUITE, "HTTP streaming", "no bundle: pass --bundle", peer_name="")]
    if gguf is None:
        from build.import_model import default_gguf

        gguf = default_gguf()
    ggufs, why = gguf_peers(gguf, Path(work or "var/work") / "gguf-peers", threads)
    peer = _chosen_peer(out, ggufs)
    if peer is None:
        return [skipped_record(SUITE, "HTTP streaming", f"no GGUF peer: {why}", peer_name="")]
    plant = plant or (REPO / "examples" / "plant")
    docs = _documents(plant, 520)  # ~800 tokens with the question and the template
    rounds = 1 if quick else 8  # ~17 s a round on the 2-core box; three left decode ratios ±15 %
    # 64 new tokens, as in the generation and memory suites: with 32 the decode rate rests on
    # ~31 inter-token gaps, where one scheduler hiccup moves it by several percent.
    max_tokens = 64
    budget_s = 300.0  # after this, no new round starts (at least one measured round runs)
    llama_active, llama_passive = f"{peer} over HTTP", f"{peer} over HTTP, threads passive"
    names = ("ours", "ours, prefix cache off", llama_active, llama_passive)
    results: dict[str, dict[str, list[dict]]] = {n: {"first": [], "follow": []} for n in names}
    procs = []
    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="http-bench-") as tmp:
        try:
            servers = {}
            p, u = _start_ours(Path(bundle), Path(tmp) / "on", threads, None)
            procs.append(p)
            servers[names[0]] = (p, u)
            p, u = _start_ours(Path(bundle), Path(tmp) / "off", threads, 0)
            procs.append(p)
            servers[names[1]] = (p, u)
            for name, passive in ((llama_active, False), (llama_passive, True)):
                p, u = _start_llama(ggufs[peer], threads, 2048, passive=passive)
                procs.append(p)
                servers[name] = (p, u)
            order = list(names)
            t_start = time.monotonic()
            for round_ in range(rounds + 1):  # round 0 warms up
                if round_ > 1 and time.monotonic() - t_start > budget_s:
                    break
                shift = round_ % len(order)
                doc = docs[round_ % 2]
                first = [{"role": "user", "content": f"{doc}\n\n{QUESTION}"}]
                for name in order[shift:] + order[:shift]:
                    _, url = servers[name]
                    # Ours adds its plain system prompt; llama.cpp gets it explicitly.
                    sys_msg = []
                    if "over HTTP" in name:
                        from appliance.prompting import PLAIN_SYSTEM_PROMPT

                        sys_msg = [{"role": "system", "content": PLAIN_SYSTEM_PROMPT}]
                    a = _stream(url, sys_msg + first, max_tokens, {})
                    follow = first + [
                        {"role": "assistant", "content": a["text"]},
                        {"role": "user", "content": FOLLOW_UP},
                    ]
                    b = _stream(url, sys_msg + follow, max_tokens, {})
                    if round_ > 0:
                        results[name]["first"].append(a)
                        results[name]["follow"].append(b)
            peaks = {n: _peak_mb(servers[n][0].pid) for n in names}
        except (RuntimeError, OSError) as exc:
            log.warning("HTTP bench: %s", exc)
            return [skipped_record(SUITE, "HTTP streaming", str(exc), peer_name=llama_active)]
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
    load_after = [round(x, 2) for x in os.getloadavg()]
    params = {
        "threads": threads,
        "max_tokens": max_tokens,
        "rounds": len(results["ours"]["first"]),
        "llama_omp_wait_policy": {llama_active: "default (spinning)", llama_passive: "PASSIVE"},
        "prompt_tokens_ours": results["ours"]["first"][0].get("prompt_tokens"),
        "load_average_before": load_before,
        "load_average_after": load_after,
    }
    out_records = []
    for label, kind in (("first turn", "first"), ("follow-up turn", "follow")):
        ours = results["ours"][kind]
        cached = [r["cached_tokens"] for r in ours if r.get("cached_tokens") is not None]
        extra = {
            **params,
            "ours_cached_tokens_median": summarize(cached)["median"] if cached else None,
            "ours_prompt_tokens_median": summarize(
                [r["prompt_tokens"] for r in ours if r.get("prompt_tokens")]
            )["median"]
            if any(r.get("prompt_tokens") for r in ours)
            else None,
        }
        for peer_name in names[1:]:
            theirs = results[peer_name][kind]
            for metric, key, unit, better in (
                ("time to first token", "ttft_s", "s", "lower"),
                ("decode speed", "decode_tok_s", "tokens/s", "higher"),
            ):
                a = summarize([r[key] for r in ours])
                b = summarize([r[key] for r in theirs])
                out_records.append(
                    make_record(
                        SUITE,
                        f"HTTP streaming {metric}, {label} (~800-token prompt)",
                        unit,
                        a["median"],
                        b["median"],
                        peer_name,
                        better,
                        ours_p95=a["p95"],
                        peer_p95=b["p95"],
                        repeats=a["n"],
                        params=extra,
                        note="POST /v1/chat/completions with stream=true, timed from the request "
                        "on the client; cached_tokens = usage.prompt_tokens_details.cached_tokens "
                        "the service reports",
                    )
                )
    if all(peaks.values()):
        out_records.append(
            make_record(
                SUITE,
                "HTTP server peak resident memory",
                "MB",
                peaks["ours"],
                peaks[llama_active],
                llama_active,
                "lower",
                params=params,
                note="ours: the whole service (generator, embedder, index, web server); the "
                "peer: llama.cpp's model behind a minimal server",
            )
        )
    return out_records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("var/work"))
    parser.add_argument("--plant", type=Path)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--gguf", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    records = run(
        args.quick,
        bundle=args.bundle,
        work=args.work,
        plant=args.plant,
        threads=args.threads,
        gguf=args.gguf,
    )
    print(json.dumps(records, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
