"""Chat-format training data: validation, duplicates, a deterministic split, loss masking.

Input is JSON lines, one conversation per line:
    {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}
Other keys (such as "source") are kept and ignored by training.

Everything is checked before a model is loaded: every problem is reported with its file, line
and a fix, all at once. The model's own chat template renders each conversation, and the loss
counts assistant tokens only (each assistant turn through its end-of-turn marker, so the model
also learns to stop).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.errors import UserFacingError

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
IGNORE_INDEX = -100  # label value the loss skips
MAX_LISTED_PROBLEMS = 20


class DataError(UserFacingError):
    """Training data that cannot be used; the message lists file:line: problem for each one."""

    def __init__(self, path: Path | str, problems: Sequence[str]):
        self.path = Path(path)
        self.problems = list(problems)
        shown = self.problems[:MAX_LISTED_PROBLEMS]
        more = len(self.problems) - len(shown)
        text = (
            f"{self.path}: {len(self.problems)} problem(s) in the training data:\n  "
            + "\n  ".join(shown)
        )
        if more > 0:
            text += f"\n  ... and {more} more"
        text += "\nFix these lines (or remove them) and run the command again."
        super().__init__(text)


@dataclass(frozen=True)
class ChatExample:
    """One validated conversation and where it came from."""

    messages: tuple[dict[str, str], ...]
    path: Path
    line: int
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}"

    @property
    def question(self) -> str:
        """The first user turn: the key for duplicates, overlap and the split."""
        return next(m["content"] for m in self.messages if m["role"] == "user")

    @property
    def answer(self) -> str:
        """The last assistant turn."""
        return [m["content"] for m in self.messages if m["role"] == "assistant"][-1]


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def question_key(example: ChatExample) -> str:
    return _normalise(" | ".join(m["content"] for m in example.messages if m["role"] == "user"))


def conversation_key(example: ChatExample) -> str:
    return _normalise(" | ".join(f"{m['role']}: {m['content']}" for m in example.messages))


def _check_record(record: Any) -> tuple[list[dict[str, str]] | None, list[str]]:
    """Validate one decoded line; return (messages, problems)."""
    if not isinstance(record, dict):
        return None, [f"expected a JSON object with a 'messages' list, got {type(record).__name__}"]
    messages = record.get("messages")
    if messages is None:
        return None, [
            'no \'messages\' key (expected {"messages": [{"role": ..., "content": ...}]})'
        ]
    if not isinstance(messages, list) or not messages:
        return None, ["'messages' must be a non-empty list of {role, content} objects"]
    problems: list[str] = []
    clean: list[dict[str, str]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            problems.append(f"message {i} is not an object with 'role' and 'content'")
            continue
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            problems.append(f"message {i} has unknown role {role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            problems.append(
                f"message {i} ({role}) has no text 'content' (got {type(content).__name__})"
            )
        elif not content.strip():
            problems.append(
                f"message {i} ({role}) has empty content; write the text or drop the turn"
            )
        if role == "system" and i != 0:
            problems.append(f"message {i}: a system message may only come first")
        clean.append({"role": str(role), "content": content if isinstance(content, str) else ""})
    roles = [m["role"] for m in clean]
    if "assistant" not in roles:
        problems.append("no assistant turn: there is nothing to learn from this line")
    elif "user" not in roles:
        problems.append("no user turn before the assistant's answer")
    elif roles.index("user") > roles.index("assistant"):
        problems.append("the first assistant turn comes before any user turn")
    return clean, problems


def load_chat_jsonl(path: Path | str) -> list[ChatExample]:
    """Read and validate a chat JSONL file; raise DataError listing every problem."""
    path = Path(path)
    if not path.is_file():
        raise UserFacingError(
            f"training data {path} does not exist; pass a .jsonl file with --data"
        )
    examples: list[ChatExample] = []
    problems: list[str] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as exc:
                problems.append(f"{path.name}:{lineno}: bad JSON ({exc.msg} at column {exc.colno})")
                continue
            messages, line_problems = _check_record(record)
            problems.extend(f"{path.name}:{lineno}: {p}" for p in line_problems)
            if messages is not None and not line_problems:
                extra = {k: v for k, v in record.items() if k != "messages"}
                examples.append(ChatExample(tuple(messages), path, lineno, extra))
    if problems:
        raise DataError(path, problems)
    if not examples:
        raise DataError(path, [f"{path.name}: the file holds no conversations"])
    return examples


@dataclass
class DataReport:
    """What happened to the data before training; written to <out>/data_report.json."""

    files: list[str] = field(default_factory=list)
    loaded: int = 0
    duplicates: list[str] = field(default_factory=list)  # "train.jsonl:9 repeats train.jsonl:3"
    conflicting: list[str] = field(default_factory=list)  # same question, different answers
    overlap: list[str] = field(default_factory=list)  # train lines whose question is in eval
    truncated: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    train_examples: int = 0
    eval_examples: int = 0
    train_tokens: int = 0
    train_loss_tokens: int = 0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def log_summary(self) -> None:
        for title, items in (
            ("duplicate conversations (dropped, the first copy is kept)", self.duplicates),
            ("questions with different answers (kept, split together)", self.conflicting),
            ("train/eval overlap (removed from training)", self.overlap),
            ("samples longer than the context: truncated", self.truncated),
            ("samples longer than the context: dropped", self.dropped),
        ):
            if items:
                log.warning(
                    "%s: %d\n  %s", title, len(items), "\n  ".join(items[:MAX_LISTED_PROBLEMS])
                )
        log.info(
            "data: %d train / %d eval examples, %d train tokens (%d counted in the loss)",
            self.train_examples,
            self.eval_examples,
            self.train_tokens,
            self.train_loss_tokens,
        )


def drop_duplicates(examples: Sequence[ChatExample], report: DataReport) -> list[ChatExample]:
    """Drop exact repeats (normalised text); note questions that got different answers."""
    seen: dict[str, ChatExample] = {}
    by_question: dict[str, ChatExample] = {}
    kept = []
    for ex in examples:
        key = conversation_key(ex)
        if key in seen:
            report.duplicates.append(f"{ex.where} repeats {seen[key].where}")
            continue
        seen[key] = ex
        q = question_key(ex)
        if q in by_question:
            report.conflicting.append(f"{ex.where} asks the question of {by_question[q].where}")
        else:
            by_question[q] = ex
        kept.append(ex)
    return kept


def split_train_eval(
    examples: Sequence[ChatExample], eval_fraction: float, seed: int
) -> tuple[list[ChatExample], list[ChatExample]]:
    """Deterministic split by question: the same question never lands on both sides.

    Questions are ordered by a seeded hash of their text, so the split does not depend on the
    order of the file, and adding lines moves few existing examples across.
    """
    groups: dict[str, list[ChatExample]] = {}
    for ex in examples:
        groups.setdefault(question_key(ex), []).append(ex)
    if len(groups) < 2:
        raise UserFacingError(
            "need at least 2 distinct questions to hold some out for evaluation; add examples "
            "or pass a separate --eval-data FILE"
        )

    def rank(key: str) -> str:
        return hashlib.sha256(f"{seed}\0{key}".encode()).hexdigest()

    ordered = sorted(groups, key=rank)
    n_eval = min(len(ordered) - 1, max(1, round(eval_fraction * len(ordered))))
    eval_keys = set(ordered[:n_eval])
    train = [ex for ex in examples if question_key(ex) not in eval_keys]
    evaluation = [ex for ex in examples if question_key(ex) in eval_keys]
    return train, evaluation


def remove_overlap(
    train: Sequence[ChatExample], evaluation: Sequence[ChatExample], report: DataReport
) -> list[ChatExample]:
    """Remove train examples whose question is also an eval question (keeps eval loss honest)."""
    eval_by_q = {question_key(ex): ex for ex in evaluation}
    kept = []
    for ex in train:
        other = eval_by_q.get(question_key(ex))
        if other is not None:
            report.overlap.append(f"{ex.where} has the question of {other.where}")
        else:
            kept.append(ex)
    return kept


# --- chat template and loss mask --------------------------------------------------------------


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX outside assistant turns

    @property
    def loss_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def _common_prefix_len(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def render_with_assistant_spans(
    tokenizer: Any, messages: Sequence[dict[str, str]]
) -> tuple[str, list[tuple[int, int]]]:
    """Render with the chat template; return the text and the character spans of assistant turns.

    A span starts where the template's generation prompt ends (so the role header is not
    learned) and runs through the end-of-turn marker, found as the part the conversation
    rendered up to that turn shares with the whole conversation.
    """
    messages = list(messages)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(
            messages[:i], tokenize=False, add_generation_prompt=True
        )
        upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not full.startswith(prompt) or not upto.startswith(prompt):
            raise UserFacingError(
                "the model's chat template renders earlier turns differently once later turns are "
                "added, so the loss cannot be limited to assistant tokens; use a model whose "
                "template is prefix-stable, or single-turn examples"
            )
        end = _common_prefix_len(full, upto)
        if end <= len(prompt):
            raise UserFacingError("the chat template dropped an assistant turn from the rendering")
        spans.append((len(prompt), end))
    return full, spans


def tokenize_example(tokenizer: Any, messages: Sequence[dict[str, str]]) -> TokenizedExample:
    """Token ids and labels (assistant tokens only) for one conversation, not yet cut to length."""
    text, spans = render_with_assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [IGNORE_INDEX] * len(ids)
    span_iter = iter(spans)
    span = next(span_iter, None)
    for t, (start, end) in enumerate(enc["offset_mapping"]):
        while span is not None and start >= span[1]:
            span = next(span_iter, None)
        if span is None:
            break
        if end > start and start >= span[0]:
            labels[t] = ids[t]
    return TokenizedExample(ids, labels)


def fit_to_context(
    ex: ChatExample, tok: TokenizedExample, max_len: int, policy: str, report: DataReport
) -> TokenizedExample | None:
    """Apply the over-length policy; record what happened to the sample in the report."""
    n = len(tok.input_ids)
    if n <= max_len:
        return tok
    if policy == "truncate":
        cut = TokenizedExample(tok.input_ids[:max_len], tok.labels[:max_len])
        if cut.loss_tokens == 0:
            report.dropped.append(
                f"{ex.where}: {n} tokens, longer than the context ({max_len}): dropped, because "
                f"its answer starts after token {max_len} (shorten the passages or the question)"
            )
            return None
        report.truncated.append(
            f"{ex.where}: {n} tokens, longer than the context ({max_len}): truncated to {max_len}"
        )
        return cut
    report.dropped.append(
        f"{ex.where}: {n} tokens, longer than the context ({max_len}): dropped "
        "(shorten it, raise --max-seq-length, or pass --overlong truncate)"
    )
    return None


def tokenize_examples(
    tokenizer: Any,
    examples: Sequence[ChatExample],
    max_len: int,
    policy: str,
    report: DataReport,
) -> list[TokenizedExample]:
    out = []
    problems = []
    for ex in examples:
        try:
            tok = tokenize_example(tokenizer, ex.messages)
        except UserFacingError:
            raise
        except Exception as exc:  # the template raised (e.g. it wants alternating roles)
            problems.append(f"{ex.where}: the chat template rejected this conversation: {exc}")
            continue
        if tok.loss_tokens == 0:
            problems.append(f"{ex.where}: no assistant tokens after applying the chat template")
            continue
        fitted = fit_to_context(ex, tok, max_len, policy, report)
        if fitted is not None:
            out.append(fitted)
    if problems:
        raise DataError(examples[0].path if examples else Path("?"), problems)
    return out


def check_tokenizer(tokenizer: Any, base: Path) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise UserFacingError(
            f"the tokenizer in {base} has no chat template; add 'chat_template' to its "
            "tokenizer_config.json (or import the model with `expert import-model`, which writes one)"
        )
    if not getattr(tokenizer, "is_fast", False):
        raise UserFacingError(
            f"the tokenizer in {base} is not a fast (tokenizer.json) tokenizer; the loss mask needs "
            "character offsets. Save a tokenizer.json next to the model."
        )


@dataclass
class PreparedData:
    train: list[TokenizedExample]
    evaluation: list[TokenizedExample]
    report: DataReport
    train_examples: list[ChatExample]
    eval_examples: list[ChatExample]


def prepare_data(
    tokenizer: Any,
    train_examples: Sequence[ChatExample],
    eval_examples: Sequence[ChatExample],
    max_len: int,
    policy: str,
    report: DataReport,
) -> PreparedData:
    """Tokenize both splits with the loss mask and the over-length policy."""
    train = tokenize_examples(tokenizer, train_examples, max_len, policy, report)
    evaluation = tokenize_examples(tokenizer, eval_examples, max_len, policy, report)
    if not train:
        raise UserFacingError(
            "no training example is left after the length policy; see the warnings"
        )
    if not evaluation:
        raise UserFacingError("no eval example is left after the length policy; see the warnings")
    report.train_examples = len(train)
    report.eval_examples = len(evaluation)
    report.train_tokens = sum(len(t.input_ids) for t in train)
    report.train_loss_tokens = sum(t.loss_tokens for t in train)
    return PreparedData(train, evaluation, report, list(train_examples), list(eval_examples))


def load_and_split(
    data: Path, eval_data: Path | None, eval_fraction: float, seed: int
) -> tuple[list[ChatExample], list[ChatExample], DataReport]:
    """Load, validate, de-duplicate and split. Raises before any model is touched."""
    report = DataReport(files=[str(data)] + ([str(eval_data)] if eval_data else []))
    examples = load_chat_jsonl(data)
    report.loaded = len(examples)
    examples = drop_duplicates(examples, report)
    if eval_data is not None:
        evaluation = drop_duplicates(load_chat_jsonl(eval_data), report)
        train = remove_overlap(examples, evaluation, report)
    else:
        train, evaluation = split_train_eval(examples, eval_fraction, seed)
    if not train:
        raise UserFacingError(f"{data}: every training example also appears in the eval data")
    return train, evaluation, report


def load_mix(
    specs: Sequence[str], evaluation: Sequence[ChatExample], seed: int, report: DataReport
) -> list[ChatExample]:
    """Extra training files ("FILE[:WEIGHT]"), weighted by repetition, never overlapping eval.

    Each example is repeated int(WEIGHT) times, plus once more with probability equal to the
    fraction (seeded). Exact repeats inside a file are dropped first; questions of the eval
    split are removed, as for the main file.
    """
    import random

    from trainer.config import parse_mix

    rng = random.Random(seed)
    out: list[ChatExample] = []
    for spec in specs:
        path, weight = parse_mix(spec)
        report.files.append(str(spec))
        examples = drop_duplicates(load_chat_jsonl(path), report)
        report.loaded += len(examples)
        examples = remove_overlap(examples, evaluation, report)
        whole, frac = int(weight), weight - int(weight)
        for ex in examples:
            out.extend([ex] * (whole + (1 if rng.random() < frac else 0)))
        log.info("mixed in %s: %d examples x %.2f -> %d", path, len(examples), weight, len(out))
    return out


class ChatDataCollator:
    """Pads a batch on the right; padded label positions are ignored by the loss."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, batch: Sequence[TokenizedExample | dict]) -> dict:
        import torch

        rows = [
            b if isinstance(b, dict) else {"input_ids": b.input_ids, "labels": b.labels}
            for b in batch
        ]
        width = max(len(r["input_ids"]) for r in rows)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            width = (width + m - 1) // m * m
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"], dtype=torch.long)
            labels[i, :n] = torch.tensor(r["labels"], dtype=torch.long)
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


class ListDataset:
    """A map-style dataset over tokenized examples (what Trainer's DataLoader needs)."""

    def __init__(self, items: Sequence[TokenizedExample]):
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        t = self.items[i]
        return {"input_ids": t.input_ids, "labels": t.labels}
