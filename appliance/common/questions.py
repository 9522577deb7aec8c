"""The one schema of an evaluation question (a line of `qa/eval.jsonl`) and its one reader.

Every tool that reads held-out questions (`expert eval`, the quality gate, retrieval
evaluation, the benchmarks) goes through `load_questions`, so a bad line gets the same message
everywhere and no tool quietly accepts a file another refuses.

Test: .venv/bin/pytest tests/build/test_eval_splits.py tests/build/test_eval_report.py
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from appliance.errors import UserFacingError


@dataclass(frozen=True)
class EvalQuestion:
    """One held-out question (a line of qa/eval.jsonl)."""

    id: str
    question: str
    expected_facts: tuple[str, ...]
    answerable: bool
    reference_answer: str = ""
    source: str | tuple[str, ...] | None = None
    filters: dict | None = None
    split: str | None = None  # "dev" (tune here) or "test" (report only); None: unsplit file
    page: int | None = None  # the source's page (PDF) holding the answer, when labelled

    def to_dict(self) -> dict:
        d = asdict(self)
        d["expected_facts"] = list(self.expected_facts)
        if isinstance(self.source, tuple):
            d["source"] = list(self.source)
        if self.page is None:
            del d["page"]  # labelled on few questions; reports stay as they were without it
        return d


# Held-out questions carry "split": "dev" questions are the only ones any tuned value (the
# abstention threshold, prompt variants, training steps) may be chosen on; "test" questions are
# reported and never tuned on. `stratified_split` assigns them.
SPLITS = ("dev", "test")


def load_questions(path: Path | str, split: str | None = None) -> list[EvalQuestion]:
    """Read and check an eval JSONL file; every problem is reported with its line, all at once.
    `split` ("dev" / "test") keeps only that split's questions; a file without splits is refused
    then, since tuning on an unsplit set is what the splits exist to prevent."""
    path = Path(path)
    if split is not None and split not in SPLITS:
        raise UserFacingError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if not path.is_file():
        raise UserFacingError(
            f"questions file {path} does not exist; pass --questions FILE (JSON lines with id, "
            "question, expected_facts, answerable, reference_answer, source, filters)"
        )
    questions: list[EvalQuestion] = []
    problems: list[str] = []
    seen: set[str] = set()
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError as exc:
            problems.append(f"{where}: not valid JSON ({exc.msg})")
            continue
        if not isinstance(rec, dict):
            problems.append(f"{where}: expected a JSON object")
            continue
        qid = rec.get("id")
        question = rec.get("question")
        facts = rec.get("expected_facts", [])
        answerable = rec.get("answerable", True)
        reference = rec.get("reference_answer") or ""
        source = rec.get("source")
        filters = rec.get("filters")
        page = rec.get("page")
        qsplit = rec.get("split")
        bad = []
        if not isinstance(qid, str | int) or isinstance(qid, bool) or not str(qid).strip():
            bad.append("'id' must be a non-empty string")
        elif str(qid) in seen:
            bad.append(f"id {qid!r} is used twice; ids must be unique")
        if not isinstance(question, str) or not question.strip():
            bad.append("'question' must be a non-empty string")
        if not isinstance(facts, list) or not all(isinstance(f, str) and f.strip() for f in facts):
            bad.append("'expected_facts' must be a list of non-empty strings")
        if not isinstance(answerable, bool):
            bad.append("'answerable' must be true or false")
        if not isinstance(reference, str):
            bad.append("'reference_answer' must be a string")
        if source is not None and not (
            isinstance(source, str)
            or (isinstance(source, list) and all(isinstance(s, str) for s in source))
        ):
            bad.append("'source' must be a document name, a list of them, or null")
        if filters is not None and not isinstance(filters, dict):
            bad.append("'filters' must be an object (metadata field -> value) or null")
        if page is not None and (not isinstance(page, int) or isinstance(page, bool) or page < 1):
            bad.append(f"'page' must be a page number (1, 2, ...) or null, got {page!r}")
        if qsplit is not None and qsplit not in SPLITS:
            bad.append(f"'split' must be one of {list(SPLITS)} or absent, got {qsplit!r}")
        if bad:
            problems.extend(f"{where}: {b}" for b in bad)
            continue
        seen.add(str(qid))
        questions.append(
            EvalQuestion(
                id=str(qid),
                question=question.strip(),
                expected_facts=tuple(f.strip() for f in facts),
                answerable=answerable,
                reference_answer=reference,
                source=tuple(source) if isinstance(source, list) else source,
                filters=filters or None,
                page=page,
                split=qsplit,
            )
        )
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise UserFacingError(
            f"{path}: {len(problems)} problem(s) in the questions:\n  {shown}{more}\n"
            "Fix these lines and run the command again."
        )
    if not questions:
        raise UserFacingError(f"{path}: no questions; add one JSON object per line")
    if split is not None:
        unsplit = [q.id for q in questions if q.split is None]
        if unsplit:
            raise UserFacingError(
                f"{path}: {len(unsplit)} question(s) have no 'split' (e.g. {unsplit[0]}); assign "
                "dev/test splits first (appliance.common.questions.stratified_split; see "
                "examples/plant/tools/assign_splits.py)"
            )
        questions = [q for q in questions if q.split == split]
        if not questions:
            raise UserFacingError(f"{path}: no questions in split {split!r}")
    return questions


def stratified_split(
    records: Sequence[Mapping[str, Any]],
    *,
    seed: int,
    strata: Callable[[Mapping[str, Any]], Any],
    dev_share: float = 0.5,
) -> dict[str, str]:
    """{id: "dev" | "test"} for every record: each stratum (e.g. answerable x source document)
    is shuffled with `seed` and cut at `dev_share`, the odd one out of a stratum going to
    whichever split is behind overall, so both splits hold every kind of question. A record
    that already has a "split" keeps it (adding questions never moves old ones)."""
    import random

    if not 0.0 < dev_share < 1.0:
        raise ValueError(f"dev_share must be in (0, 1), got {dev_share!r}")
    out: dict[str, str] = {}
    groups: dict[str, list[str]] = {}
    for rec in records:
        rid = str(rec["id"])
        if rec.get("split") in SPLITS:
            out[rid] = rec["split"]
        else:
            groups.setdefault(repr(strata(rec)), []).append(rid)
    counts = {s: sum(v == s for v in out.values()) for s in SPLITS}
    for key in sorted(groups):
        ids = sorted(groups[key])
        random.Random(f"{seed}:{key}").shuffle(ids)
        n_dev = math.floor(len(ids) * dev_share)
        if len(ids) * dev_share - n_dev > 1e-9:  # an odd one out: to the split that is behind
            total = counts["dev"] + counts["test"]
            behind = counts["dev"] + n_dev < dev_share * (total + len(ids))
            n_dev += 1 if behind else 0
        for i, rid in enumerate(ids):
            out[rid] = "dev" if i < n_dev else "test"
            counts[out[rid]] += 1
    return out
