# Run: .venv/bin/pytest tests/trainer/test_data.py
"""Chat data: validation messages, duplicates, overlap, the split, and the assistant-only mask."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.errors import UserFacingError
from tests.trainer.trainer_samples import chat, qa_records, write_jsonl
from trainer.data import (
    IGNORE_INDEX,
    ChatDataCollator,
    DataError,
    DataReport,
    conversation_key,
    fit_to_context,
    load_and_split,
    load_chat_jsonl,
    split_train_eval,
    tokenize_example,
)


def test_every_problem_is_reported_with_file_and_line(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "bad.jsonl",
        [
            chat("ok?", "ok."),
            '{"messages": [{"role": "user", "content": "broken"',
            {
                "messages": [
                    {"role": "operator", "content": "hi"},
                    {"role": "assistant", "content": "x"},
                ]
            },
            chat("empty answer?", "   "),
            {"messages": [{"role": "user", "content": "only a question"}]},
            {"text": "no messages"},
        ],
    )
    with pytest.raises(DataError) as info:
        load_chat_jsonl(path)
    text = str(info.value)
    assert "bad.jsonl:2: bad JSON" in text
    assert "bad.jsonl:3: message 0 has unknown role 'operator'" in text
    assert "bad.jsonl:4: message 1 (assistant) has empty content" in text
    assert "bad.jsonl:5: no assistant turn" in text
    assert "bad.jsonl:6: no 'messages' key" in text
    assert "bad.jsonl:1" not in text
    assert "6 problem(s)" in text  # line 3 also lacks a user turn


def test_missing_file_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(UserFacingError, match="--data"):
        load_chat_jsonl(tmp_path / "nope.jsonl")


def test_extra_keys_are_kept(qa_file: Path) -> None:
    examples = load_chat_jsonl(qa_file)
    assert examples[0].extra == {"source": "docs/facts.md"}


def test_duplicates_and_overlap_are_reported(tmp_path: Path) -> None:
    records = qa_records()
    train = write_jsonl(tmp_path / "train.jsonl", records + [records[0], records[5]])
    evals = write_jsonl(tmp_path / "eval.jsonl", [records[1], chat("new question?", "new answer.")])
    train_ex, eval_ex, report = load_and_split(train, evals, 0.1, seed=1)
    assert report.duplicates == [
        "train.jsonl:25 repeats train.jsonl:1",
        "train.jsonl:26 repeats train.jsonl:6",
    ]
    assert report.overlap == ["train.jsonl:2 has the question of eval.jsonl:1"]
    assert len(train_ex) == len(records) - 1 and len(eval_ex) == 2


def _keys(examples: list) -> list[str]:
    return [conversation_key(e) for e in examples]


def test_split_is_deterministic_grouped_and_order_free(tmp_path: Path) -> None:
    records = qa_records() + [
        chat("What is P-101?", "It is a pump.")
    ]  # same question, other answer
    a = load_chat_jsonl(write_jsonl(tmp_path / "a.jsonl", records))
    b = load_chat_jsonl(write_jsonl(tmp_path / "b.jsonl", list(reversed(records))))
    train_a, eval_a = split_train_eval(a, 0.25, seed=7)
    train_b, eval_b = split_train_eval(b, 0.25, seed=7)
    assert sorted(_keys(eval_a)) == sorted(_keys(eval_b))
    assert {e.question for e in train_a}.isdisjoint({e.question for e in eval_a})
    assert 5 <= len(eval_a) <= 7
    _, eval_other = split_train_eval(a, 0.25, seed=8)
    assert sorted(_keys(eval_other)) != sorted(_keys(eval_a))


def test_loss_mask_covers_assistant_turns_only(tiny_phi3_hf: Path) -> None:
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(tiny_phi3_hf)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is P-101?"},
        {"role": "assistant", "content": "The raw water feed pump."},
        {"role": "user", "content": "Its lock point?"},
        {"role": "assistant", "content": "LP-12."},
    ]
    ex = tokenize_example(tok, messages)
    pairs = list(zip(ex.input_ids, ex.labels, strict=True))
    learned = tok.decode([t for t, lab in pairs if lab != IGNORE_INDEX])
    ignored = tok.decode([t for t, lab in pairs if lab == IGNORE_INDEX])
    end_of_turn = learned[len("The raw water feed pump.") :].split("LP-12.")[0]
    # Both answers, each through the template's end-of-turn marker, and nothing else.
    assert learned.startswith("The raw water feed pump.") and end_of_turn.strip()
    assert learned.rstrip().endswith("LP-12." + end_of_turn.strip())
    assert "What is P-101?" in ignored and "Be brief." in ignored and "LP-12" not in ignored
    assert "pump" not in ignored


def test_overlong_samples_are_dropped_or_truncated(tmp_path: Path, tiny_phi3_hf: Path) -> None:
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(tiny_phi3_hf)
    long_q = chat("word " * 60 + "?", "answer " * 30)
    ex = load_chat_jsonl(write_jsonl(tmp_path / "t.jsonl", [long_q]))[0]
    full = tokenize_example(tok, ex.messages)
    report = DataReport()
    assert fit_to_context(ex, full, 40, "drop", report) is None
    assert "t.jsonl:1:" in report.dropped[0] and "dropped" in report.dropped[0]
    assert fit_to_context(ex, full, 40, "truncate", report) is None  # answer starts after 40
    assert "its answer starts after token 40" in report.dropped[1]
    cut = fit_to_context(ex, full, len(full.input_ids) - 5, "truncate", report)
    assert cut is not None and len(cut.input_ids) == len(full.input_ids) - 5
    assert "truncated to" in report.truncated[0]


def test_collator_pads_and_ignores_padding() -> None:
    from trainer.data import TokenizedExample

    batch = ChatDataCollator(pad_token_id=0)(
        [TokenizedExample([5, 6, 7], [IGNORE_INDEX, 6, 7]), TokenizedExample([8], [8])]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_mixed_files_are_weighted_and_kept_out_of_eval(tmp_path: Path) -> None:
    from trainer.config import ConfigError, parse_mix
    from trainer.data import DataReport, load_chat_jsonl, load_mix

    hand = write_jsonl(
        tmp_path / "hand.jsonl",
        [chat(f"Q{i}?", f"A{i}.") for i in range(10)] + [chat("Q0?", "A0.")],
    )
    evaluation = load_chat_jsonl(write_jsonl(tmp_path / "eval.jsonl", [chat("Q9?", "A9.")]))
    assert parse_mix(f"{hand}:2.5") == (hand, 2.5) and parse_mix(str(hand)) == (hand, 1.0)
    for bad in (f"{hand}:0", f"{hand}:-1", ""):
        with pytest.raises(ConfigError, match="FILE:WEIGHT"):
            parse_mix(bad)
    report = DataReport()
    twice = load_mix([f"{hand}:2"], evaluation, seed=1, report=report)
    assert len(twice) == 18  # 9 distinct non-eval questions x 2
    assert report.duplicates and report.overlap  # the repeated line; Q9 held out for eval
    frac = load_mix([f"{hand}:1.5"], evaluation, seed=1, report=DataReport())
    assert 9 < len(frac) < 18 and frac == load_mix([f"{hand}:1.5"], evaluation, 1, DataReport())
