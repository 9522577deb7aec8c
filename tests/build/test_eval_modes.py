# Run: .venv/bin/pytest tests/build/test_eval_modes.py
"""The evaluation end to end on real parts: the plant's documents in a real index, the tiny
Phi-3 exported to int4 in a real bundle, answers through appliance.answering, and `expert eval`
building its own fine-tuned model (two LoRA steps), bundle and report."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest

from appliance.common.questions import load_questions
from build.bundle_evaluation import open_retriever
from build.eval_metrics import VERDICTS
from build.evaluation import EvalSettings, run_modes, standard_modes
from tests.conftest import cached_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[2]
# A few questions of every kind: answerable (numbers with units, codes), and not answerable.
PICK = ("q001", "q002", "q003", "q004", "q008")


@pytest.fixture(scope="module")
def plant_index(plant_dir: Path, embedder_onnx: Path) -> Path:
    from appliance.embedding import OnnxEmbedder
    from appliance.retrieval import ingest_folder

    def make(tmp: Path) -> None:
        ingest_folder(
            plant_dir / "docs", tmp / "index", OnnxEmbedder(embedder_onnx), progress=False
        )

    docs = sorted(str(p.relative_to(REPO)) for p in (plant_dir / "docs").iterdir())
    code = sorted(str(p.relative_to(REPO)) for p in (REPO / "appliance" / "retrieval").glob("*.py"))
    return cached_dir("eval-plant-index", (*docs, *code), make) / "index"


@pytest.fixture(scope="module")
def tiny_int4(tiny_phi3_hf: Path) -> Path:
    from build.export_llm import export_llm

    def make(tmp: Path) -> None:
        export_llm(tiny_phi3_hf, tmp / "model", precision="int4")

    sources = ("tests/tiny_models.py", "build/import_model.py", "build/export_llm.py")
    return cached_dir("eval-tiny-phi3-int4", sources, make) / "model"


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory, tiny_int4: Path, embedder_onnx: Path, plant_index: Path) -> Path:
    from build.bundle import build_bundle

    return build_bundle(
        tmp_path_factory.mktemp("bundles"),
        name="tiny",
        version="0.1.0",
        llm_dir=tiny_int4,
        embedder_dir=embedder_onnx,
        index_dir=plant_index,
        accept_quality_loss=True,  # a random tiny model: the evaluation's plumbing is tested
    )


@pytest.fixture(scope="module")
def mini_plant(tmp_path_factory, plant_dir: Path) -> Path:
    """The example plant's questions, cut down: 5 eval questions, 12 training conversations."""
    root = tmp_path_factory.mktemp("plant")
    (root / "qa").mkdir()
    lines = (plant_dir / "qa" / "eval.jsonl").read_text(encoding="utf-8").splitlines()
    picked = [ln for ln in lines if ln.strip() and json.loads(ln)["id"] in PICK]
    assert len(picked) == len(PICK)
    (root / "qa" / "eval.jsonl").write_text("\n".join(picked) + "\n", encoding="utf-8")
    train = (plant_dir / "qa" / "train.jsonl").read_text(encoding="utf-8").splitlines()[:12]
    (root / "qa" / "train.jsonl").write_text("\n".join(train) + "\n", encoding="utf-8")
    return root


def test_fake_generator_through_the_answering_path(tiny_bundle: Path, mini_plant: Path) -> None:
    """FakeGenerator answers from passage [1]: retrieval, citations and abstention are real."""
    from appliance.bundle import load_bundle
    from appliance.generation.fake import FakeGenerator
    from build.bundle_evaluation import bundle_policy
    from build.eval_report import build_report

    bundle = load_bundle(tiny_bundle)
    questions = load_questions(mini_plant / "qa" / "eval.jsonl")
    modes = standard_modes(bundle.llm_dir, bundle.llm_dir, only=["base", "base+rag"])
    opened = []

    def open_generator(mode):
        opened.append(mode.model)
        return FakeGenerator(context_length=4096)

    with open_retriever(bundle) as retriever:
        records = run_modes(
            questions,
            modes,
            open_generator=open_generator,
            retriever=retriever,
            settings=EvalSettings(max_new_tokens=64),
            policy=bundle_policy(bundle.manifest),
            progress=False,
        )
    assert opened == ["base-int4"]  # one model for both modes
    assert [(r.mode, r.question_id) for r in records] == [
        (m.name, q.id) for m in modes for q in questions
    ]
    by = {(r.mode, r.question_id): r for r in records}
    # without retrieval the fake echoes the question: no citations, no abstention flag
    assert by[("base", "q001")].text.startswith("You asked:")
    assert by[("base", "q001")].cited == [] and by[("base", "q001")].score["cited"] is None
    for q in questions:
        r = by[("base+rag", q.id)]
        assert r.ttft_s is not None and r.ttft_s <= r.total_s
        if r.service_abstained:
            assert r.abstained and r.completion_tokens == 0
        elif q.answerable:
            # a named entry's field is quoted without a prompt (appliance.fields)
            assert (r.prompt_tokens > 100 or r.extracted and r.model_text == "") and r.retrieved
            assert r.score["cited"] and r.cited[0]["n"] >= 1
            assert r.score["citation_correct"] is not None
    report = build_report(questions, modes, records)
    assert set(report["summary"]) == {"base", "base+rag"}
    assert report["summary"]["base+rag"]["citation_accuracy"] is not None


def _check_report(out: Path, mode_names: list[str]) -> dict:
    data = json.loads((out / "report.json").read_text(encoding="utf-8"))
    html = (out / "report.html").read_text(encoding="utf-8")
    md = (out / "report.md").read_text(encoding="utf-8")
    assert [m["name"] for m in data["modes"]] == mode_names
    assert [q["id"] for q in data["questions"]] == list(PICK)
    for q in data["questions"]:
        assert set(q["results"]) == set(mode_names)
        assert f'id="q-{q["id"]}"' in html and f"| {q['id']} |" in md
        for r in q["results"].values():
            assert r["score"]["verdict"] in VERDICTS
            assert r["error"] is None, r["error"]
    n_test = sum(q.get("split") == "test" for q in data["questions"])
    assert data["summary_split"] == "test" and 0 < n_test < len(PICK)
    for name, s in data["summary"].items():
        assert s["n_questions"] == n_test, name  # the main table is the test split
        assert data["summary_by_split"]["all"][name]["n_questions"] == len(PICK), name
        for key in (
            "handled_correctly",
            "fact_recall",
            "token_f1",
            "abstention_accuracy",
            "ttft_mean_s",
            "total_mean_s",
            "tokens_mean",
        ):
            assert key in s
    assert data["recommendation"]["mode"] in {*mode_names, None}
    assert html.count("data:image/png;base64,") == 3
    return data


FOUR = ["base", "base+rag", "finetuned", "finetuned+rag"]


def test_expert_eval_on_the_tiny_model(tiny_bundle: Path, mini_plant: Path, tmp_path: Path) -> None:
    """`expert eval --bundle BASE --bundle FINETUNED --questions FILE`: the four modes on the
    tiny Phi-3 (int4, onnxruntime-genai; the same bundle stands in for both models)."""
    from appliance.cli import main

    out = tmp_path / "eval"
    argv = [
        "eval",
        "--bundle",
        str(tiny_bundle),
        "--bundle",
        str(tiny_bundle),
        "--questions",
        str(mini_plant / "qa" / "eval.jsonl"),
        "--out",
        str(out),
        "--max-new-tokens",
        "8",
    ]
    assert main(argv) == 0
    data = _check_report(out, FOUR)
    assert data["run"]["finetuned_bundle"] == str(tiny_bundle)
    # greedy and seeded: the same answers twice
    first = {(q["id"], m): r["text"] for q in data["questions"] for m, r in q["results"].items()}
    assert main(argv + ["--modes", "base,base+rag"]) == 0
    again = json.loads((out / "report.json").read_text(encoding="utf-8"))
    for q in again["questions"]:
        for m, r in q["results"].items():
            assert r["text"] == first[(q["id"], m)]


def test_a_report_replayed_through_the_reader_that_made_it_is_the_same(
    tiny_bundle: Path, mini_plant: Path, tmp_path: Path, capsys
) -> None:
    """`benchmarks/reader_replay.py`: `evaluate_modes` with a generator that gives each
    question the model text a report recorded reproduces that report's answers, text for text,
    when the reader is the one that made it (base and base + RAG share one opened model)."""
    from appliance.cli import main
    from benchmarks.reader_replay import main as replay

    questions = str(mini_plant / "qa" / "eval.jsonl")
    out = tmp_path / "eval"
    argv = ["eval", "--bundle", str(tiny_bundle), "--questions", questions, "--out", str(out)]
    assert main([*argv, "--max-new-tokens", "8", "--modes", "base,base+rag"]) == 0
    capsys.readouterr()
    again = tmp_path / "replay"
    argv = [str(out / "report.json"), "--out", str(again), "--bundle", str(tiny_bundle)]
    assert replay([*argv, "--questions", questions, "--modes", "base,base+rag"]) == 0
    printed = capsys.readouterr().out
    rows = printed.strip().splitlines()
    assert len(rows) == 4 and all(r.endswith("changed: none") for r in rows)  # 2 modes x 2 splits
    before, after = (json.loads((d / "report.json").read_text("utf-8")) for d in (out, again))
    assert [
        (q["id"], m, r["text"]) for q in after["questions"] for m, r in q["results"].items()
    ] == [(q["id"], m, r["text"]) for q in before["questions"] for m, r in q["results"].items()]


def test_expert_eval_retrieval_and_bad_flags(
    tiny_bundle: Path, mini_plant: Path, tmp_path: Path, capsys
) -> None:
    from appliance.cli import main

    out = tmp_path / "retrieval.json"
    questions = str(mini_plant / "qa" / "eval.jsonl")
    assert (
        main(
            [
                "eval",
                "retrieval",
                "--bundle",
                str(tiny_bundle),
                "--questions",
                questions,
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads(out.read_text())["questions"] == len(PICK)
    # flags of another sub-mode, and missing inputs, are refused with the fix
    assert (
        main(
            [
                "eval",
                "retrieval",
                "--bundle",
                str(tiny_bundle),
                "--questions",
                questions,
                "--hf",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "--hf do(es) not apply" in capsys.readouterr().err
    assert main(["eval", "--bundle", str(tiny_bundle), "--out", str(tmp_path / "x")]) == 2
    assert "--questions" in capsys.readouterr().err
    assert main(["eval", "quality-gate", "--hf", str(tmp_path)]) == 2
    assert "missing --onnx, --docs, --questions, --out" in capsys.readouterr().err


@pytest.mark.slow
def test_expert_eval_builds_the_finetuned_bundle(
    tiny_bundle: Path, mini_plant: Path, tmp_path: Path
) -> None:
    """`expert eval modes --plant --work --bundle` as `make eval` runs it, plus the fp32
    models: trains (two RAG-aware LoRA steps), merges, exports (int4 and fp32) and bundles the
    fine-tuned tiny model, runs the eight modes; a second run reuses what the first built."""
    from appliance.cli import main

    out, work = tmp_path / "eval", tmp_path / "work"
    argv = [
        "eval", "modes", "--plant", str(mini_plant), "--work", str(work), "--bundle",
        str(tiny_bundle), "--out", str(out), "--max-new-tokens", "8", "--train-max-steps", "2",
        "--full-precision",
    ]  # fmt: skip
    assert main(argv) == 0
    data = _check_report(out, FOUR + [f"{m}@fp32" for m in FOUR])
    assert {m["model"] for m in data["modes"]} == {
        "base-int4", "finetuned-int4", "base-fp32", "finetuned-fp32"
    }  # fmt: skip
    ft = data["run"]["build"]["finetune"]
    bundle = Path(ft["bundle"])
    assert bundle.name == "bundle-tiny-finetuned-0.1.0" and (bundle / "manifest.json").is_file()
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["finetune"]["key"] == ft["key"]
    assert manifest["export"]["adapter"]["mode"] == "merged"
    assert json.loads((Path(ft["fp32_dir"]) / "export.json").read_text())["precision"] == "fp32"
    assert ft["training"]["global_step"] == 2
    # The fine-tuned int4 model went through the quality gate; the bundle carries its result.
    from appliance.quality_gate import digest_of, model_file_hashes

    gate = ft["quality_gate"]
    assert isinstance(gate["passed"], bool) and gate["reference"].endswith("+ merged LoRA adapter")
    assert gate["model_sha256"] == digest_of(model_file_hashes(Path(ft["int4_dir"])))
    assert manifest["quality_gate"]["model"]["sha256"] == gate["model_sha256"]
    if not gate["passed"]:  # a random tiny model may fail it: bundled anyway, and recorded
        assert manifest["quality_loss_accepted"]["problem"] == "failed"
    assert not any(ft["reused"].values())
    assert data["run"]["finetuned_bundle"] == str(bundle)

    # second run: everything is reused, only the evaluation runs again
    shutil.rmtree(out)
    assert main(argv + ["--modes", "finetuned"]) == 0
    again = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert all(again["run"]["build"]["finetune"]["reused"].values())
    assert [m["name"] for m in again["modes"]] == ["finetuned", "finetuned@fp32"]


@pytest.mark.slow
def test_expert_eval_trains_on_pairs_without_a_plant(
    tiny_bundle: Path, mini_plant: Path, tmp_path: Path
) -> None:
    """`expert eval modes --train-data PAIRS` as `make eval-synth` runs it: no plant folder, so
    the fine-tuned model's quality gate reads the bundle's own index text and the evaluation's
    questions (it used to fail on the missing plant after training and export)."""
    from appliance.cli import main

    pairs = tmp_path / "pairs.jsonl"
    shutil.copy(mini_plant / "qa" / "train.jsonl", pairs)
    out, work = tmp_path / "eval", tmp_path / "work"
    argv = [
        "eval", "modes", "--bundle", str(tiny_bundle), "--work", str(work),
        "--train-data", str(pairs), "--train-max-examples", "8", "--train-max-steps", "1",
        "--modes", "base+rag,finetuned+rag", "--questions", str(mini_plant / "qa" / "eval.jsonl"),
        "--out", str(out), "--max-new-tokens", "8",
    ]  # fmt: skip
    assert main(argv) == 0
    data = _check_report(out, ["base+rag", "finetuned+rag"])
    ft = data["run"]["build"]["finetune"]
    assert ft["training"]["global_step"] == 1
    gate = json.loads((Path(ft["work_dir"]) / "quality-gate.json").read_text(encoding="utf-8"))
    assert isinstance(gate["passed"], bool) and gate["tokens_scored"] > 0
    asked = {a["question"] for a in gate["answers"]}
    eval_questions = {q.question for q in load_questions(mini_plant / "qa" / "eval.jsonl")}
    assert asked and asked <= eval_questions


def test_calibrate_threshold_on_dev_only(
    tiny_bundle: Path, plant_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    """`expert eval calibrate`: the threshold comes from the dev split, test is only reported,
    and --out merges it into a bundle-extra file without losing its other keys."""
    from appliance.cli import main as expert

    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({"prompting": {"domain": "the plant"}}), encoding="utf-8")
    argv = ["eval", "calibrate", "--bundle", str(tiny_bundle), "--questions"]
    assert expert([*argv, str(plant_dir / "qa" / "eval.jsonl"), "--out", str(extra)]) == 0
    data = json.loads(extra.read_text(encoding="utf-8"))
    assert data["prompting"] == {"domain": "the plant"}
    cal = data["retrieval"]["abstain_threshold_calibration"]
    assert cal["chosen_on"] == "dev" and set(cal["by_split"]) == {"dev", "test"}
    t = data["retrieval"]["abstain_threshold"]
    assert t == int(cal["calibrated"] * 100) / 100 and -1 <= t <= 1
    answered, total = map(int, cal["by_split"]["dev"]["answered"].split()[0].split("/"))
    assert answered >= 0.95 * total
    # --decimals: e5's scores lie in a narrow band, so its bundles keep four decimals.
    fine = tmp_path / "fine.json"
    argv = [*argv, str(plant_dir / "qa" / "eval.jsonl"), "--out", str(fine), "--decimals", "4"]
    assert expert(argv) == 0
    data = json.loads(fine.read_text(encoding="utf-8"))["retrieval"]
    assert data["abstain_threshold"] == math.floor(cal["calibrated"] * 10**4) / 10**4
    assert expert([*argv[:-1], "9"]) == 2
    assert "--decimals must be between 1 and 6" in capsys.readouterr().err
    # --cross-language: the Spanish questions over the English plant give the threshold for
    # questions in another language; the bundle's own threshold in the file is kept.
    argv = ["eval", "calibrate", "--bundle", str(tiny_bundle), "--cross-language", "--questions"]
    assert expert([*argv, str(plant_dir / "qa" / "eval-es.jsonl"), "--out", str(extra)]) == 0
    data = json.loads(extra.read_text(encoding="utf-8"))["retrieval"]
    assert data["abstain_threshold"] == t
    cross = data["abstain_threshold_cross_language_calibration"]
    assert cross["chosen_on"] == "dev" and cross["questions"].startswith("in another language")
    es_rows = (plant_dir / "qa" / "eval-es.jsonl").read_text(encoding="utf-8").splitlines()
    es_dev = sum(1 for r in map(json.loads, es_rows) if r["split"] == "dev" and r["answerable"])
    assert cross["by_split"]["dev"]["answered"].endswith(f"/{es_dev} answerable")
    assert data["abstain_threshold_cross_language"] == int(cross["calibrated"] * 100) / 100
    capsys.readouterr()
    assert expert([*argv, str(plant_dir / "qa" / "eval.jsonl")]) == 2
    assert "no question is in another language" in capsys.readouterr().err


def test_calibrate_by_answers_on_the_sentence_signal(
    tiny_bundle: Path, plant_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    """--by-answers: the bundle's own model answers the dev questions both ways and the record
    says how many came out right at the chosen threshold and at the score rule's; --signal is
    recorded beside the threshold, and a file whose threshold was calibrated on another signal
    is refused rather than mixed."""
    from appliance.cli import main as expert

    rows = [
        json.loads(line)
        for line in (plant_dir / "qa" / "eval.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    dev = [r for r in rows if r["split"] == "dev"]
    few = [r for r in dev if r["answerable"]][:4] + [r for r in dev if not r["answerable"]][:2]
    few += [r for r in rows if r["split"] == "test"][:2]
    questions = tmp_path / "few.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in few), encoding="utf-8")
    extra = tmp_path / "extra.json"
    argv = ["eval", "calibrate", "--bundle", str(tiny_bundle), "--questions", str(questions)]
    argv += ["--decimals", "4", "--out", str(extra), "--signal", "passage+sentence"]
    assert expert([*argv, "--by-answers", "--threads", "1"]) == 0
    data = json.loads(extra.read_text(encoding="utf-8"))["retrieval"]
    assert data["abstain_signal"] == "passage+sentence"
    cal = data["abstain_threshold_calibration"]
    assert cal["signal"] == "passage+sentence" and cal["chosen_on"] == "dev"
    answers = cal["by_answers"]
    right, total = map(int, answers["right"].split("/"))
    assert total == 6 and right >= int(answers["right_at_score_rule"].split("/")[0])
    assert right >= int(answers["right_refusing_nothing"].split("/")[0])
    assert answers["tied_from"] <= cal["calibrated"] <= answers["tied_to"]
    assert data["abstain_threshold"] == math.floor(cal["calibrated"] * 10**4) / 10**4
    capsys.readouterr()
    # The cross-language threshold must be compared with the same score as the bundle's own.
    passage = [a if a != "passage+sentence" else "passage" for a in argv]
    cross = [*passage, "--cross-language"]
    cross[cross.index(str(questions))] = str(plant_dir / "qa" / "eval-es.jsonl")
    assert expert(cross) == 2
    err = capsys.readouterr().err
    assert "abstain_threshold was calibrated on the signal 'passage+sentence'" in err
    assert json.loads(extra.read_text(encoding="utf-8"))["retrieval"] == data  # nothing lost
    # Calibrated again on another signal, the bundle's own threshold is replaced whole.
    assert expert(passage) == 0
    again = json.loads(extra.read_text(encoding="utf-8"))["retrieval"]
    assert (
        again["abstain_signal"] == "passage"
        and "by_answers" not in (again["abstain_threshold_calibration"])
    )
    assert expert([*argv[:-2], "--signal", "chunk"]) == 2
    assert "--signal must be one of passage, passage+sentence" in capsys.readouterr().err
