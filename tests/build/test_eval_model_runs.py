"""build/eval_model_runs.py: counts per split, and times over the answers the model wrote only."""

import json

from build.eval_model_runs import main, split_stats


def _result(verdict, abstained=False, tokens=0, ttft=0.01, model_text=""):
    return {"base+rag": {"score": {"verdict": verdict, "abstained": abstained},
                         "completion_tokens": tokens, "model_text": model_text, "ttft_s": ttft,
                         "total_s": ttft + 0.5, "prompt_tokens": 300, "unsupported_values": []}}  # fmt: skip


REPORT = {"questions": [
    {"split": "test", "answerable": True, "results": _result("correct")},  # a quoted field
    {"split": "test", "answerable": True, "results": _result("correct", tokens=9, ttft=2.0,
                                                             model_text="It is 5.")},
    {"split": "test", "answerable": True, "results": _result("wrong", tokens=9, ttft=4.0,
                                                             model_text="It is 6.")},
    {"split": "test", "answerable": True, "results": _result("abstained", abstained=True)},
    {"split": "test", "answerable": False, "results": _result("correct", abstained=True)},
    {"split": "dev", "answerable": True, "results": _result("correct")},
]}  # fmt: skip


def test_split_stats_time_only_what_the_model_wrote():
    s = split_stats(REPORT, "test")
    assert (s["right"], s["answerable"], s["needless_abstentions"]) == (2, 4, 1)
    assert (s["unanswerable_abstained"], s["unanswerable"], s["questions"]) == (1, 1, 5)
    assert s["model_wrote"] == 2 and s["first_token_median_s"] == 3.0
    assert split_stats(REPORT, "dev")["model_wrote"] == 0
    assert split_stats(REPORT, "dev")["first_token_median_s"] is None


def test_cli_prints_both_splits_and_names_a_missing_report(tmp_path, capsys):
    path = tmp_path / "report.json"
    path.write_text(json.dumps(REPORT), encoding="utf-8")
    assert main([str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "test: right 2/4" in out[1] and "the model wrote 2" in out[1]
    assert main([str(tmp_path / "nope.json")]) == 2
    assert "no such report" in capsys.readouterr().err
