"""Run every benchmark suite against its peers and write the results.

Run: `expert bench --bundle var/bundles/bundle-plant-0.1.0 --work var/work` (what `make bench`
does), or `expert bench --suites generation --quick` (build/commands/bench.py is the command line).

Each suite is a module of this package exposing `run(quick: bool, **paths) -> list[dict]` of
records (benchmarks/records.py). It runs in its own process, one suite at a time, so one
suite's threads and memory never disturb another's figures and a crash or a hang becomes a
"skipped: reason" entry instead of ending the run. That process leads its own process group;
when the suite ends, times out or the run is interrupted, the whole group is stopped, so a
server or worker the suite started never outlives it. A suite's `run` receives the keyword
arguments it declares among: bundle, work, plant, threads, gguf, out (the results folder, for
figures). It may instead return {"records": [...], "sections": [{"title", "markdown"}]}:
Markdown blocks (tables, verdicts, figures) shown under the suite's table.

Writes benchmarks/results/<date>-<host>.json, latest.json, and the Markdown summary
<date>-<host>.md / latest.md (benchmarks/summary.py).
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import multiprocessing as mp
import os
import tempfile
import time
import traceback
from pathlib import Path

from appliance.errors import UserFacingError
from benchmarks.processes import stop_group
from benchmarks.records import SUITES, normalize_records, skipped_record

log = logging.getLogger(__name__)

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# suite module -> the suite its records belong to. Run in this order: generation first, while the
# machine is freshest, because it is the one with a parity target. (quantization_bench.py is a
# standalone tool that chooses export settings; it compares no peer, so it is not a suite here.)
SUITE_MODULES: dict[str, str] = {
    "generation_bench": "generation",
    "http_bench": "generation",
    "memory_bench": "generation",
    "retrieval_bench": "retrieval",
    "ingest_bench": "retrieval",
    "embedding_bench": "embedding",
    "training_bench": "training",
    "service_bench": "service",
}
# Keyword arguments a suite's run() may declare; it gets those it names.
SUITE_KWARGS = ("bundle", "work", "plant", "threads", "gguf", "out", "spinning")
DEFAULT_TIMEOUT_S = 1800
# Seconds a stopped suite's processes get to exit on SIGTERM before SIGKILL.
STOP_GRACE_S = 10.0


def _lead_own_group(pid: int = 0) -> None:
    """Make process `pid` (0: this one) the leader of a new process group. Both the parent and
    the suite's process ask, so the group exists as early as possible whichever runs first."""
    try:
        os.setpgid(pid, pid)
    except (PermissionError, ProcessLookupError):
        pass  # the child has already started Python (it asks itself) or is gone


def _suite_child(
    module_name: str, quick: bool, kwargs: dict, out_path: str, package: str = "benchmarks"
) -> None:
    """Runs in a fresh process: import the suite, run it, write its records (or its error)."""
    _lead_own_group()
    where = f"{package.replace('.', '/')}/{module_name}.py"
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    result: dict
    try:
        module = importlib.import_module(f"{package}.{module_name}")
    except ModuleNotFoundError as exc:
        missing = exc.name or str(exc)
        if missing == f"{package}.{module_name}":
            result = {"skipped": f"{where} does not exist yet"}
        else:
            result = {"skipped": f"{where} needs the missing module {missing!r}"}
        Path(out_path).write_text(json.dumps(result))
        return
    except Exception as exc:  # noqa: BLE001 - any import failure becomes a skip with its reason
        result = {"skipped": f"importing {where} failed: {type(exc).__name__}: {exc}"}
        Path(out_path).write_text(json.dumps(result))
        return
    fn = getattr(module, "run", None)
    if not callable(fn):
        result = {"skipped": f"{where} has no run(quick: bool) function"}
        Path(out_path).write_text(json.dumps(result))
        return
    try:
        accepted = inspect.signature(fn).parameters
        takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
        call = {k: v for k, v in kwargs.items() if takes_all or k in accepted}
        if "quick" in accepted or takes_all:
            call["quick"] = quick
        started = time.monotonic()
        returned = fn(**call)
        sections: list = []
        if isinstance(returned, dict):
            sections = list(returned.get("sections") or [])
            if returned.get("raw") is not None and kwargs.get("out"):
                raw_path = Path(kwargs["out"]) / "raw" / f"{module_name}.json"
                raw_path.parent.mkdir(parents=True, exist_ok=True)
                raw_path.write_text(json.dumps(returned["raw"], indent=1, default=str))
            returned = returned.get("records")
        result = {
            "records": list(returned or []),
            "sections": sections,
            "duration_s": time.monotonic() - started,
        }
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        result = {"skipped": f"{where} failed: {type(exc).__name__}: {exc}"}
    Path(out_path).write_text(json.dumps(result, default=str))


def run_suite(
    module_name: str,
    *,
    quick: bool,
    kwargs: dict,
    timeout_s: float,
    package: str = "benchmarks",
) -> tuple[list[dict], dict]:
    """Run one suite module (`package.module_name`) in a child process that leads its own
    process group; returns (records, info); info["sections"] holds the suite's Markdown
    sections, if any. However the suite ends, nothing of its group is left running."""
    default_suite = SUITE_MODULES.get(module_name, "generation")
    where = f"{package.replace('.', '/')}/{module_name}.py"
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="expert-bench-") as tmp:
        out_path = Path(tmp) / "result.json"
        started = time.monotonic()
        process = ctx.Process(
            target=_suite_child,
            name=f"bench-{module_name}",
            args=(module_name, quick, kwargs, str(out_path), package),
        )
        process.start()
        _lead_own_group(process.pid)
        try:
            process.join(timeout_s)
            timed_out = process.is_alive()
        finally:
            _stop_suite(process, module_name)
        if timed_out:
            reason = f"{where} did not finish within {timeout_s:.0f} s"
            return [skipped_record(default_suite, module_name, reason, source=module_name)], {
                "status": "timeout",
                "duration_s": time.monotonic() - started,
            }
        duration = time.monotonic() - started
        if not out_path.is_file():
            reason = f"{where} crashed (exit code {process.exitcode})"
            return [skipped_record(default_suite, module_name, reason, source=module_name)], {
                "status": "crashed",
                "duration_s": duration,
            }
        result = json.loads(out_path.read_text())
    if "skipped" in result:
        return [
            skipped_record(default_suite, module_name, result["skipped"], source=module_name)
        ], {"status": "skipped", "duration_s": duration}
    records = normalize_records(result["records"], source=module_name, default_suite=default_suite)
    if not records and not result.get("sections"):
        reason = f"{where} returned no records"
        records = [skipped_record(default_suite, module_name, reason, source=module_name)]
    sections = [
        {"suite": default_suite, "source": module_name, **s}
        for s in result.get("sections") or []
        if isinstance(s, dict) and "title" in s and "markdown" in s
    ]
    return records, {"status": "ok", "duration_s": duration, "sections": sections}


def _stop_suite(process: mp.process.BaseProcess, module_name: str) -> None:
    """Stop a suite's process and every process of its group (the servers and workers it
    started), whether it timed out, the run was interrupted, or it returned and left one."""
    running = process.is_alive()
    stopped = [pid for pid in stop_group(process.pid, STOP_GRACE_S) if pid != process.pid]
    if process.is_alive():  # it had not made its own group yet
        process.kill()
    process.join()
    if stopped:
        log.warning(
            "suite %s %s; stopped %d process(es) it started: %s",
            module_name,
            "was stopped" if running else "left processes running",
            len(stopped),
            ", ".join(map(str, stopped)),
        )


def run_all(
    *, suites: list[str], quick: bool, kwargs: dict, timeout_s: float
) -> tuple[list[dict], dict]:
    records: list[dict] = []
    info: dict = {}
    sections: list[dict] = []
    for module_name in suites:
        log.info("suite %s ...", module_name)
        got, meta = run_suite(module_name, quick=quick, kwargs=kwargs, timeout_s=timeout_s)
        log.info(
            "suite %s: %s, %d record(s) in %.0f s",
            module_name,
            meta["status"],
            len(got),
            meta["duration_s"],
        )
        records.extend(got)
        sections.extend(meta.pop("sections", None) or [])
        info[module_name] = {**meta, "duration_s": round(meta["duration_s"], 1)}
    # Every suite the design names appears in the summary, if only as "did not run".
    seen = {r["suite"] for r in records}
    for suite in SUITES:
        if suite not in seen:
            records.append(
                skipped_record(suite, suite, "no benchmark module produced results for this suite")
            )
    if sections:
        info["sections"] = sections
    return records, info


def carry_over(records: list[dict], path: Path, modules: list[str]) -> list[dict]:
    """This run's records plus the records of every other module (by `source`, else by suite)
    from the earlier results file at `path`, marked with the date they were measured."""
    if not path.is_file():
        raise UserFacingError(f"--carry-over {path}: no such results file")
    try:
        old = json.loads(path.read_text())
    except ValueError as exc:
        raise UserFacingError(f"--carry-over {path} is not a results JSON: {exc}") from None
    ran_suites = {SUITE_MODULES.get(m, m) for m in modules}
    when = str(old.get("created", "?"))[:10]
    carried = [
        r
        for r in old.get("results") or []
        if (r.get("source") not in modules if r.get("source") else r.get("suite") not in ran_suites)
    ]
    carried_suites = {r.get("suite") for r in carried}
    # Drop this run's "did not run" placeholders for suites the old file fills.
    kept = [
        r
        for r in records
        if not (r.get("skipped") and r["suite"] in carried_suites and r.get("source") is None)
    ]
    for r in carried:
        r = dict(r)
        r["params"] = {"carried_over_from": when, **(r.get("params") or {})}
        kept.append(r)
    return kept


def carry_over_sections(old: dict, modules: list[str], new: list[dict]) -> list[dict]:
    """The earlier file's report sections that this run did not remake: a section is remade
    when its module ran (by `source`) or, for sections written before they named their
    module, when this run wrote one with the same title. Carried ones say so in their title."""
    when = str(old.get("created", "?"))[:10]

    def base(title) -> str:
        return str(title or "").split(" (carried over from")[0]

    titles = {base(s.get("title")) for s in new}
    kept = []
    for s in old.get("sections") or []:
        if s.get("source") in modules or base(s.get("title")) in titles:
            continue
        title = str(s.get("title", ""))
        if "(carried over from" not in title:
            title = f"{title} (carried over from {when})"
        kept.append({**s, "title": title})
    return kept


def _resolve_suites(text: str | None) -> list[str]:
    if not text:
        return list(SUITE_MODULES)
    chosen = []
    by_suite = {}
    for module, suite in SUITE_MODULES.items():
        by_suite.setdefault(suite, []).append(module)
    for item in (x.strip() for x in text.split(",") if x.strip()):
        if item in SUITE_MODULES:
            chosen.append(item)
        elif item in by_suite:
            chosen.extend(by_suite[item])
        elif f"{item}_bench" in SUITE_MODULES:
            chosen.append(f"{item}_bench")
        else:
            raise UserFacingError(
                f"unknown suite {item!r}; choose from {', '.join(SUITES)} or a module name "
                f"({', '.join(SUITE_MODULES)})"
            )
    return list(dict.fromkeys(chosen))


def run_benchmarks(
    *,
    bundle: Path | None,
    work: Path | None,
    plant: Path | None,
    suites: str | None = None,
    quick: bool = False,
    threads: int | None = None,
    out: Path = RESULTS_DIR,
    spinning: bool = True,
    carry_over_from: Path | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> int:
    """Run the chosen suites (a comma list; None: all), write the results into `out`, print
    where they are; returns 0."""
    from benchmarks.machine import describe_machine, usable_cores
    from benchmarks.summary import results_document, write_results

    if threads is not None and threads < 1:
        raise UserFacingError(f"--threads must be >= 1, got {threads}")
    if bundle is not None and not (bundle / "manifest.json").is_file():
        raise UserFacingError(
            f"{bundle} is not a bundle (no manifest.json); build one with "
            "`make bundle` or pass the folder `expert bundle` wrote"
        )
    if timeout_s <= 0:
        raise UserFacingError(f"--timeout must be > 0 seconds, got {timeout_s}")
    chosen = _resolve_suites(suites)
    threads = threads or usable_cores()
    gguf = None
    try:
        from build.import_model import default_gguf

        gguf = default_gguf()
    except Exception as exc:  # noqa: BLE001 - the llama.cpp peer is then skipped with this reason
        log.warning("no embedded GGUF: %s", exc)
    kwargs = {
        "bundle": bundle.resolve() if bundle else None,
        "work": work.resolve() if work else None,
        "plant": plant.resolve() if plant and plant.is_dir() else None,
        "threads": threads,
        "gguf": gguf,
        "out": out.resolve(),
        "spinning": spinning,
    }
    machine = describe_machine()
    started = time.monotonic()
    records, info = run_all(suites=chosen, quick=quick, kwargs=kwargs, timeout_s=timeout_s)
    sections = info.pop("sections", [])
    if carry_over_from:
        records = carry_over(records, Path(carry_over_from), chosen)
        old = json.loads(Path(carry_over_from).read_text())
        sections = carry_over_sections(old, chosen, sections) + sections
    meta = {
        "quick": quick,
        "threads": threads,
        "bundle": str(kwargs["bundle"]) if kwargs["bundle"] else None,
        "work": str(kwargs["work"]) if kwargs["work"] else None,
        "duration_s": round(time.monotonic() - started, 1),
        "suites": info,
    }
    machine["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    document = results_document(machine, records, meta=meta, sections=sections)
    paths = write_results(out, document)
    measured = sum(1 for r in records if not r.get("skipped"))
    print(
        f"{measured} comparison(s), {len(records) - measured} skipped; results: {paths['json']}, "
        f"summary: {paths['markdown']}"
    )
    return 0
