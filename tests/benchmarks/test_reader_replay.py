"""benchmarks/reader_replay.py: recorded texts, the replaying generator and the comparison (no
bundle needed; `tests/build/test_eval_modes.py` runs `evaluate_modes` with a given generator)."""

from appliance.generation.base import GenerationParams
from benchmarks.reader_replay import ReplayGenerator, compare, recorded_texts

PARAMS = GenerationParams(max_new_tokens=16)


def _report(text_q1: str, abstained_q2: bool) -> dict:
    return {
        "questions": [
            {
                "id": "q1",
                "question": "What torque?",
                "answerable": True,
                "split": "dev",
                "results": {
                    "base+rag": {
                        "text": text_q1,
                        "model_text": "It is 120 N·m [1].",
                        "abstained": False,
                        "score": {"verdict": "correct" if "120" in text_q1 else "wrong"},
                    },
                    "base": {"text": "No idea.", "model_text": "No idea.", "abstained": False,
                             "score": {"verdict": "wrong"}},
                },
            },
            {
                "id": "q2",
                "question": "What torque on P-999?",
                "answerable": False,
                "split": "test",
                "results": {
                    "base+rag": {
                        "text": "Not in the documents." if abstained_q2 else "120 N·m",
                        "model_text": "",
                        "abstained": abstained_q2,
                        "score": {"verdict": "correct" if abstained_q2 else "hallucinated"},
                    },
                },
            },
        ]
    }  # fmt: skip


def test_the_generator_replays_the_text_of_the_question_and_mode_it_is_asked():
    recorded = recorded_texts(_report("It is 120 N·m [1].", True))
    gen = ReplayGenerator(recorded, "base+rag", context_length=4096)
    rag = '<|user|>\n<passage id="1">\nThe torque is 120 N·m.\n</passage>\nQuestion: What torque?'
    assert gen.answer_for(rag, PARAMS) == "It is 120 N·m [1]."
    # The same model answers the plain mode: a prompt without passages is that mode's.
    assert gen.answer_for("<|user|>\nWhat torque?", PARAMS) == "No idea."
    # The longest question held wins ("What torque?" is inside "What torque on P-999?").
    assert gen.answer_for(rag.replace("What torque?", "What torque on P-999?"), PARAMS) == ""
    assert gen.answer_for("<|user|>\nSomething else", PARAMS) == ""
    # Streamed whole, past the fake token count's limit, and counted when no question matched.
    long = ReplayGenerator({("base", "What torque?"): "word " * 40}, "base", context_length=4096)
    stream = long.generate("<|user|>\nWhat torque?", PARAMS)
    assert "".join(stream) == "word " * 40
    assert "".join(long.generate("<|user|>\nOther?", PARAMS)) == "" and long.unmatched == 1


def test_the_comparison_counts_right_outcomes_and_changed_answers():
    before = _report("It is 120 N·m [1].", abstained_q2=False)
    after = _report("It is 95 N·m [1].", abstained_q2=True)
    rows = {(r["mode"], r["split"]): r for r in compare(before, after)}
    dev = rows[("base+rag", "dev")]
    assert (dev["before"], dev["after"], dev["n"], dev["changed"]) == (1, 0, 1, ["q1(1->0)"])
    test = rows[("base+rag", "test")]
    assert (test["before"], test["after"], test["changed"]) == (0, 1, ["q2(0->1)"])
    assert rows[("base", "dev")]["changed"] == []
