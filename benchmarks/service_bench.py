"""Service latency, memory and cold start: `expert serve` against the same engine in-process.

Run (all suites):  `expert bench --bundle var/bundles/bundle-plant-0.1.0`
Run (this suite):  .venv/bin/python -m benchmarks.service_bench [--quick] [--bundle DIR]

Ours is the real service: `expert serve` in its own process (waitress, slots, SSE), driven
over HTTP by client threads that stream grounded answers to the example plant's answerable
questions whose answer the model writes (screened in-process first: most are answered from a
quoted field with no model run). The peer is the very same bundle and answering code
(appliance.answering) called in-process, with the same number of slots (a semaphore), no
HTTP: the ratio is what the service layer costs (both admit work through the same FIFO slot
pool). Measured, at
concurrency 1, 2, 4 and 8 (closed loop: each client thread sends its next question when the last
answer ends; the service's default slots and a queue of 16):
- time to first token (request sent -> first answer text received; queueing included),
- total latency (request sent -> end of the answer),
as medians and p95; then peak resident memory (VmHWM) of each process and cold start (process
start -> ready to answer: /readyz for ours, parts loaded for the peer). Phases alternate
(peer, ours) so a noisy neighbour hits both alike.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.processes import chat_events, child_env, free_port, status_kib, wait_ready
from benchmarks.records import make_record, skipped_record, summarize

log = logging.getLogger(__name__)

SUITE = "service"
PEER = "same bundle in-process (appliance.answering, no HTTP)"
REPO = Path(__file__).resolve().parents[1]
CONCURRENCY = (1, 2, 4, 8)


def _default_bundle() -> Path | None:
    found = sorted((REPO / "var" / "bundles").glob("bundle-*/manifest.json"), key=os.path.getmtime)
    return found[-1].parent if found else None


def _questions(plant: Path) -> list[str]:
    from appliance.common.questions import load_questions

    return [q.question for q in load_questions(plant / "qa" / "eval.jsonl") if q.answerable]


def _peak_mib(pid: int) -> float:
    """The process's peak resident memory (VmHWM) in MiB."""
    kib = status_kib(pid, ("VmHWM",)).get("VmHWM")
    return float("nan") if kib is None else kib / 1024


def _drive(questions: list[str], concurrency: int, ask) -> tuple[list[float], list[float]]:
    """Run every question through `ask(q) -> (ttft_s, total_s)` with `concurrency` threads."""
    ttft: list[float] = []
    total: list[float] = []
    lock = threading.Lock()
    todo = list(questions)

    def worker() -> None:
        while True:
            with lock:
                if not todo:
                    return
                q = todo.pop(0)
            first, whole = ask(q)
            with lock:
                ttft.append(first)
                total.append(whole)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ttft, total


# --- the peer: the engine in-process ------------------------------------------------------


def _peer_worker(
    conn, bundle: str, state: str, threads: int | None, slots: int, t_spawn: float
) -> None:
    from appliance.answering import answer, answer_stream
    from appliance.generation.base import GenerationParams
    from appliance.server.config import ServeConfig
    from appliance.server.runtime import load_runtime
    from appliance.server.slots import SlotPool

    config = ServeConfig(bundle=Path(bundle), state_dir=Path(state), threads=threads, slots=slots)
    rt = load_runtime(config)
    conn.send({"cold_start_s": time.time() - t_spawn})
    # The service's own admission (FIFO among waiters); a bare Semaphore lets one thread
    # re-take the slot again and again, which flatters the median and ruins the p95.
    pool = SlotPool(slots, max_queue=64)

    def ask(question: str, max_tokens: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        first = None
        with pool.acquire(timeout=3600):
            stream = answer_stream(
                question, generator=rt.generator, retriever=rt.retriever,
                params=GenerationParams(max_new_tokens=max_tokens), k=config.top_k, policy=rt.policy,
            )  # fmt: skip
            for _ in stream:
                if first is None:
                    first = time.perf_counter() - t0
        return first or 0.0, time.perf_counter() - t0

    # The questions whose answer the model writes: most of the plant's are answered from a
    # quoted table field or sentence with no model run (appliance.fields), which would leave the
    # curve measuring the reader, not generation under load.
    candidates, wanted, max_tokens = conn.recv()
    chosen = []
    for question in candidates:
        result = answer(
            question, generator=rt.generator, retriever=rt.retriever,
            params=GenerationParams(max_new_tokens=max_tokens), k=config.top_k, policy=rt.policy,
        )  # fmt: skip
        if result.model_text and not result.extracted and not result.abstained:
            chosen.append(question)
            if len(chosen) == wanted:
                break
    conn.send(chosen)
    while True:
        msg = conn.recv()
        if msg is None:
            break
        questions, concurrency, max_tokens = msg
        conn.send(_drive(questions, concurrency, lambda q, m=max_tokens: ask(q, m)))
    conn.send({"peak_mib": _peak_mib(os.getpid())})


# --- ours: the service over HTTP -----------------------------------------------------------


def _ask_http(url: str, question: str, max_tokens: int) -> tuple[float, float]:
    body = {
        "messages": [{"role": "user", "content": question}],
        "stream": True,
        "max_tokens": max_tokens,
    }
    t0 = time.perf_counter()
    first = None
    for event in chat_events(url, body, timeout_s=600):
        if first is None:
            choices = event.get("choices") or [{}]
            if choices[0].get("delta", {}).get("content"):
                first = time.perf_counter() - t0
    return first or 0.0, time.perf_counter() - t0


def _start_service(bundle: Path, state: Path, threads: int | None, slots: int, port: int):
    cmd = [sys.executable, "-m", "appliance.cli", "serve", "--bundle", str(bundle),
           "--state-dir", str(state), "--port", str(port), "--slots", str(slots),
           "--max-queue", "16"]  # fmt: skip
    if threads:
        cmd += ["--threads", str(threads)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=child_env())
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url, "/readyz", timeout_s=300, poll_s=0.05)
    return proc, url, time.perf_counter() - t0


def run(
    quick: bool = False,
    bundle: Path | None = None,
    plant: Path | None = None,
    threads: int | None = None,
    out: Path | None = None,
) -> dict:
    out_dir = out  # `out` is the record list below
    bundle = Path(bundle) if bundle else _default_bundle()
    plant = Path(plant) if plant else REPO / "examples" / "plant"
    if bundle is None or not (bundle / "manifest.json").is_file():
        reason = "no bundle: build one with `make bundle` or pass --bundle"
        return {"records": [skipped_record(SUITE, "service", reason, peer_name=PEER)]}
    from appliance.server.config import default_slots

    slots = default_slots()
    # Bounded for a shared 2-core box: 32-token answers, one question per client (at least 2).
    max_tokens = 32
    n_questions = {c: max(2, c) for c in CONCURRENCY}
    params = {"bundle": bundle.name, "slots": slots, "max_tokens": max_tokens, "threads": threads,
              "questions": "examples/plant/qa/eval.jsonl (answerable, answered by the model)",
              "k": 5,
              "load_average_before": [round(x, 2) for x in os.getloadavg()]}  # fmt: skip

    results: dict[str, dict] = {"ours": {}, "peer": {}}
    with tempfile.TemporaryDirectory(prefix="service-bench-") as tmp:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        peer = ctx.Process(
            target=_peer_worker,
            args=(child, str(bundle), f"{tmp}/peer", threads, slots, time.time()),
        )
        peer.start()
        results["peer"]["cold_start_s"] = parent.recv()["cold_start_s"]
        parent.send((_questions(plant), max(n_questions.values()), max_tokens))
        questions = parent.recv()
        if len(questions) < max(n_questions.values()):
            peer.kill()
            reason = f"only {len(questions)} answerable questions reach the model in {bundle.name}"
            return {"records": [skipped_record(SUITE, "service", reason, peer_name=PEER)]}
        params["questions_chosen"] = len(questions)
        proc, url, cold = _start_service(bundle, Path(tmp) / "ours", threads, slots, free_port())
        results["ours"]["cold_start_s"] = cold
        try:
            # Warm-up, one each, not measured.
            parent.send((questions[:1], 1, 8))
            parent.recv()
            _ask_http(url, questions[0], 8)
            for c in CONCURRENCY:
                qs = questions[: n_questions[c]]
                parent.send((qs, c, max_tokens))
                results["peer"][c] = parent.recv()
                results["ours"][c] = _drive(qs, c, lambda q: _ask_http(url, q, max_tokens))
            results["ours"]["peak_mib"] = _peak_mib(proc.pid)
            params["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
            parent.send(None)
            results["peer"]["peak_mib"] = parent.recv()["peak_mib"]
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)  # its graceful drain; a loaded box can make it slow
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
            peer.join(timeout=60)
            if peer.is_alive():
                peer.kill()

    out = []
    for c in CONCURRENCY:
        for i, label in enumerate(("time to first token", "total latency")):
            ours = summarize(results["ours"][c][i])
            theirs = summarize(results["peer"][c][i])
            out.append(
                make_record(
                    SUITE, f"{label} p50, concurrency {c}", "s", ours["median"], theirs["median"], PEER,
                    "lower", ours_p95=ours["p95"], peer_p95=theirs["p95"], repeats=ours["n"],
                    params={**params, "concurrency": c},
                )
            )  # fmt: skip
    out.append(
        make_record(SUITE, "peak resident memory", "MiB", results["ours"]["peak_mib"],
                    results["peer"]["peak_mib"], PEER, "lower", params=params)
    )  # fmt: skip
    out.append(
        make_record(
            SUITE, "cold start (process start to ready)", "s", results["ours"]["cold_start_s"],
            results["peer"]["cold_start_s"], PEER, "lower", params=params,
            note="ours: until /readyz answers 200; peer: until the parts are loaded",
        )
    )  # fmt: skip
    sections = []
    png = plot_concurrency(results, Path(out_dir) / "service_concurrency.png") if out_dir else None
    if png is not None:
        rows = ["| concurrency | TTFT p50 / p95 s (ours) | total p50 / p95 s (ours) | "
                "TTFT p50 / p95 s (in-process) |", "|---:|---:|---:|---:|"]  # fmt: skip
        for c in CONCURRENCY:
            t, w = summarize(results["ours"][c][0]), summarize(results["ours"][c][1])
            p = summarize(results["peer"][c][0])
            rows.append(f"| {c} | {t['median']:.2f} / {t['p95']:.2f} | {w['median']:.2f} / "
                        f"{w['p95']:.2f} | {p['median']:.2f} / {p['p95']:.2f} |")  # fmt: skip
        sections.append({
            "title": "Service: latency against concurrency",
            "markdown": f"`expert serve` with {slots} slot(s) and a queue of 16, closed-loop "
            f"clients streaming {max_tokens}-token grounded answers to the first "
            f"{params.get('questions_chosen', '?')} answerable plant questions whose answer the "
            "model writes (not a quoted field) (load average "
            f"{params['load_average_before']} before, {params.get('load_average_after')} "
            f"after).\n\n![service latency]({png.name})\n\n" + "\n".join(rows),
        })  # fmt: skip
    return {"records": out, "sections": sections}


def plot_concurrency(results: dict, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for who, style in (("ours", "-o"), ("peer", "--.")):
        for i, label in enumerate(("TTFT", "total")):
            for q, dash in (("median", ""), ("p95", ":")):
                ys = [summarize(results[who][c][i])[q] for c in CONCURRENCY]
                name = f"{'service' if who == 'ours' else 'in-process'} {label} {q}"
                ax.plot(CONCURRENCY, ys, style if not dash else dash, label=name)
    ax.set(xlabel="concurrent clients", ylabel="seconds", title="Service latency")
    ax.set_xticks(CONCURRENCY)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--plant", type=Path)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    records = run(args.quick, args.bundle, args.plant, args.threads)["records"]
    print(json.dumps(records, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
