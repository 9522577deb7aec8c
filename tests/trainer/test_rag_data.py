# Run: .venv/bin/pytest tests/trainer/test_rag_data.py   (the real-index run: add -m slow)
"""RAG-aware examples use exactly the serve-time prompt, cite the source, mix in distractors."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.prompting import NOT_IN_DOCUMENTS, PromptPassage, build_messages
from tests.trainer.trainer_samples import chat, write_jsonl
from trainer.data import IGNORE_INDEX, load_chat_jsonl, tokenize_example
from trainer.rag_data import RagStats, RetrievedPassage, build_rag_examples

# A hand-made corpus: (document, passage text).
CORPUS = [
    ("docs/pumps.md", "P-101 raw water feed pump: seal gland nuts torque 24 N·m."),
    ("docs/pumps.md", "P-201 wear ring renewed at 0.80 mm clearance."),
    ("docs/compressors.md", "C-301 oil change every 4,000 h with LUB-0311."),
    ("docs/compressors.md", "C-302 valve cover bolts 45 N·m."),
    ("docs/sop.md", "Line A start-up needs 6.0 bar compressed air."),
    ("docs/sop.md", "Shift handover uses form QF-12."),
]


def keyword_search(question: str, k: int) -> list[RetrievedPassage]:
    """Rank the corpus by shared words: a small real search function for format tests."""
    words = set(question.lower().replace("?", "").split())
    scored = sorted(
        CORPUS,
        key=lambda item: (-len(words & set(item[1].lower().replace(":", "").split())), item[1]),
    )
    return [
        RetrievedPassage(PromptPassage(text, title=Path(doc).stem), doc) for doc, text in scored[:k]
    ]


@pytest.fixture
def examples(tmp_path: Path) -> list:
    return load_chat_jsonl(
        write_jsonl(
            tmp_path / "qa.jsonl",
            [
                chat(
                    "What torque for the P-101 seal gland nuts?", "24 N·m.", source="docs/pumps.md"
                ),
                chat(
                    "When is the C-301 oil changed?",
                    "Every 4,000 h [3].",
                    source="docs/compressors.md",
                ),
                chat("Which form is the shift handover?", "QF-12.", source="docs/sop.md"),
                chat("Which form is used at handover?", "QF-12."),
            ],
        )
    )


def test_prompt_is_the_serve_time_format_with_citation_and_distractor(examples: list) -> None:
    stats = RagStats()
    out = build_rag_examples(
        examples, keyword_search, k=2, distractors=1, unanswerable_fraction=0.0, stats=stats
    )
    assert len(out) == 4 and stats.examples == 4 and stats.no_source == 1
    first = out[0]
    *prompt, answer = first.messages
    user = prompt[-1]["content"]
    shown = [p for p in CORPUS if p[1] in user]
    assert len(shown) == 3  # k=2 retrieved + 1 distractor
    passages = sorted(shown, key=lambda p: user.index(p[1]))
    expected = build_messages(
        "What torque for the P-101 seal gland nuts?",
        [PromptPassage(text, title=Path(doc).stem) for doc, text in passages],
    )
    assert list(prompt) == expected  # exactly what the appliance sends
    gold = 1 + [text for _, text in passages].index(CORPUS[0][1])
    assert answer == {"role": "assistant", "content": f"24 N·m. [{gold}]"}
    assert any(doc != "docs/pumps.md" for doc, _ in passages)  # the distractor
    # An old citation is replaced by the right number; no source means no citation.
    assert out[1].messages[-1]["content"].count("[") == 1
    assert out[3].messages[-1]["content"] == "QF-12."
    assert out[0].where == examples[0].where  # errors still point at the original line


def test_source_passage_from_a_deeper_search_replaces_the_last_one(examples: list) -> None:
    # Both top-2 hits come from the pump manual, but the example names the SOP as its source.
    ex = load_chat_jsonl(
        write_jsonl(
            examples[0].path.with_name("deep.jsonl"),
            [chat("P-101 P-201 seal wear ring torque?", "See the SOP.", source="docs/sop.md")],
        )
    )
    stats = RagStats()
    out = build_rag_examples(
        ex, keyword_search, k=2, distractors=0, unanswerable_fraction=0.0, stats=stats
    )
    assert stats.source_added == 1 and stats.source_in_top_k == 0
    user = out[0].messages[-2]["content"]
    assert CORPUS[0][1] in user and CORPUS[4][1] in user and CORPUS[1][1] not in user
    assert out[0].messages[-1]["content"] == "See the SOP. [2]"


def test_unanswerable_examples_teach_the_refusal(examples: list) -> None:
    stats = RagStats()
    out = build_rag_examples(
        examples, keyword_search, k=1, distractors=0, unanswerable_fraction=0.5, stats=stats
    )
    refusals = [e for e in out if e.messages[-1]["content"] == NOT_IN_DOCUMENTS]
    assert len(refusals) == stats.unanswerable == 2
    for e in refusals:
        source = e.extra.get("source")
        if source:
            assert not any(
                text in e.messages[-2]["content"] for doc, text in CORPUS if doc == source
            )


def test_same_seed_same_examples(examples: list) -> None:
    a = build_rag_examples(examples, keyword_search, k=2, seed=5)
    b = build_rag_examples(examples, keyword_search, k=2, seed=5)
    assert [e.messages for e in a] == [e.messages for e in b]


def test_loss_covers_the_answer_not_the_passages(examples: list, tiny_phi3_hf: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_phi3_hf)
    ex = build_rag_examples(examples[:2], keyword_search, k=2)[0]
    t = tokenize_example(tok, ex.messages)
    learned = tok.decode(
        [i for i, lab in zip(t.input_ids, t.labels, strict=True) if lab != IGNORE_INDEX]
    )
    assert learned.startswith(ex.messages[-1]["content"]) and "passage" not in learned


@pytest.mark.slow
def test_training_with_a_real_index(
    plant_dir: Path, embedder_onnx: Path, tiny_phi3_hf: Path, tmp_path: Path
) -> None:
    """`--with-retrieval`: the appliance's own retriever over the example plant documents."""
    from appliance.cli import main
    from appliance.embedding import OnnxEmbedder
    from appliance.retrieval import ingest_folder

    index = tmp_path / "index"
    ingest_folder(plant_dir / "docs", index, OnnxEmbedder(embedder_onnx), progress=False)
    lines = (plant_dir / "qa" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(lines[:40]) + "\n", encoding="utf-8")
    out = tmp_path / "adapter"
    rc = main(
        ["train", "--base", str(tiny_phi3_hf), "--data", str(data), "--out", str(out), "--max-steps", "2",
         "--with-retrieval", str(index), "--embedder", str(embedder_onnx), "--batch-size", "4",
         "--max-seq-length", "1024", "--overlong", "truncate"]
    )  # fmt: skip
    assert rc == 0
    import json

    report = json.loads((out / "data_report.json").read_text())
    rag = report["retrieval"]
    assert rag["examples"] >= 30 and rag["unanswerable"] >= 3
    assert rag["source_in_top_k"] + rag["source_added"] >= 0.8 * (
        rag["examples"] - rag["no_source"]
    )


def test_a_bundle_wording_replaces_the_plants(examples: list) -> None:
    from appliance.prompting import wording

    words = wording("the Apache HTTP Server manual")
    out = build_rag_examples(
        examples, keyword_search, k=1, distractors=0, unanswerable_fraction=0.5, words=words
    )
    assert all(e.messages[0]["content"] == words.system for e in out)
    assert all(words.passages_intro in e.messages[1]["content"] for e in out)
    refusals = [e for e in out if e.messages[-1]["content"] == words.abstain]
    assert refusals and not any(e.messages[-1]["content"] == NOT_IN_DOCUMENTS for e in out)
