# Run: .venv/bin/pytest tests/build/test_eval_commands.py
"""`expert eval results` and `expert eval rescore` on the committed evaluation reports."""

from __future__ import annotations

import json
from pathlib import Path

from appliance.cli import main as expert

RESULTS = Path(__file__).resolve().parents[2] / "results" / "eval"


def test_results_and_rescore_on_the_committed_plant_report(tmp_path: Path, capsys):
    out = tmp_path / "results"
    assert expert(["eval", "results", f"plant={RESULTS / 'plant.json'}", "--out", str(out)]) == 0
    assert (out / "summary.md").is_file() and (out / "plant.json").is_file()
    assert "plant" in capsys.readouterr().out
    again = tmp_path / "rescored"
    assert expert(["eval", "rescore", str(RESULTS / "plant.json"), "--out", str(again)]) == 0
    report = json.loads((again / "report.json").read_text(encoding="utf-8"))
    stored = json.loads((RESULTS / "plant.json").read_text(encoding="utf-8"))
    assert [q["id"] for q in report["questions"]] == [q["id"] for q in stored["questions"]]
    assert (again / "report.html").is_file() and (again / "report.md").is_file()


def test_bad_report_arguments_exit_2_with_the_fix(tmp_path: Path, capsys):
    assert expert(["eval", "results", "plant", "--out", str(tmp_path)]) == 2
    assert "write NAME=PATH/report.json" in capsys.readouterr().err
    assert expert(["eval", "rescore", str(tmp_path / "nope.json"), "--out", str(tmp_path)]) == 2
    assert "no such report.json" in capsys.readouterr().err
