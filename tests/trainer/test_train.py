# Run: .venv/bin/pytest tests/trainer/test_train.py   (slow SmolLM2 runs: add -m slow)
"""LoRA and QLoRA training on real tiny models: loss goes down, outputs, resume, settings."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from appliance.errors import UserFacingError
from tests.trainer.trainer_samples import TINY, write_jsonl
from trainer.config import ConfigError, TrainConfig, read_config_file, resolve_config


def _config(base: Path, data: Path, out: Path, **kw) -> TrainConfig:
    return TrainConfig(base=base, data=data, out=out, **{**TINY, **kw})


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_training_lowers_train_and_eval_loss(trained: dict, method: str) -> None:
    result = trained[method]
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert losses[-1] < losses[0]
    assert result.eval_loss < result.eval_loss_before
    out = result.out
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "expert_adapter.json",
    ):
        assert (out / name).is_file(), name
    assert not (out / "checkpoints").exists()
    meta = json.loads((out / "expert_adapter.json").read_text())
    assert meta["method"] == method and meta["base"]["architecture"] == "Phi3ForCausalLM"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval_loss" in r and r["epoch"]]
    # one eval per epoch (plus the final evaluation of the kept adapter)
    assert sorted({round(r["epoch"]) for r in evals}) == list(range(1, round(result.epochs) + 1))
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["global_step"] == result.global_step > 0 and summary["tokens_per_second"] > 0


def test_qlora_base_is_4bit_and_small(tiny_phi3_hf: Path, tmp_path: Path) -> None:
    import bitsandbytes as bnb

    from trainer.modeling import frozen_weight_bytes, load_model_for_training

    lora = load_model_for_training(_config(tiny_phi3_hf, tmp_path, tmp_path, method="lora"))
    qlora = load_model_for_training(_config(tiny_phi3_hf, tmp_path, tmp_path, method="qlora"))
    linears = [m for m in qlora.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert linears and all(m.weight.quant_type == "nf4" for m in linears)
    assert all(m.weight.quant_state.nested for m in linears)  # double quantization
    ratio = frozen_weight_bytes(qlora) / frozen_weight_bytes(lora)
    assert ratio <= 0.30, ratio


def test_qlora_gradients_equal_lora_on_the_dequantized_base(
    tiny_phi3_hf: Path, tmp_path: Path
) -> None:
    """The 4-bit path trains the same adapter as full precision would on the same weights."""
    import bitsandbytes as bnb
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from trainer.modeling import load_model_for_training

    config = _config(tiny_phi3_hf, tmp_path, tmp_path, method="qlora", dropout=0.0, rank=4)
    qlora = load_model_for_training(config)
    reference = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_phi3_hf, dtype=torch.float32),
        LoraConfig(r=4, lora_alpha=config.alpha, lora_dropout=0.0, target_modules="all-linear"),
    )
    torch.manual_seed(1)
    q_modules, q_params = dict(qlora.named_modules()), dict(qlora.named_parameters())
    for name, module in reference.named_modules():
        w = getattr(q_modules.get(name), "weight", None)
        if isinstance(w, bnb.nn.Params4bit):
            module.weight.data = bnb.functional.dequantize_4bit(w.data, w.quant_state).reshape(
                module.weight.shape
            )
    for name, p in reference.named_parameters():
        if "lora_" in name:
            if "lora_B" in name:
                q_params[name].data.normal_(0, 0.05)  # B starts at zero; make every path count
            p.data.copy_(q_params[name].data)
    ids = torch.randint(0, 49152, (2, 12), generator=torch.Generator().manual_seed(0))
    # An evaluation pass first, as Trainer runs one before training: bitsandbytes must not
    # switch the weights to its inference-only CPU layout, which has no backward.
    qlora.eval()
    with torch.no_grad():
        qlora(input_ids=ids)
    qlora.train()
    reference.train()
    loss_q = qlora(input_ids=ids, labels=ids).loss
    loss_r = reference(input_ids=ids, labels=ids).loss
    loss_q.backward()
    loss_r.backward()
    assert abs(loss_q.item() - loss_r.item()) < 1e-4
    grads = [(q_params[n].grad, p.grad) for n, p in reference.named_parameters() if p.requires_grad]
    assert grads and all(a is not None for a, _ in grads)
    assert max(float((a - b).abs().max() / (b.abs().max() + 1e-12)) for a, b in grads) < 1e-3


def test_interrupt_saves_a_checkpoint_and_the_rerun_resumes(
    tiny_phi3_hf: Path, qa_file: Path, tmp_path: Path
) -> None:
    from transformers import TrainerCallback

    from trainer.train import TrainingInterrupted, train

    class CtrlCAtStep3(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            if state.global_step == 3:
                os.kill(os.getpid(), signal.SIGINT)  # the real signal path, as a user's Ctrl-C

    config = _config(tiny_phi3_hf, qa_file, tmp_path / "run", method="lora", epochs=2, batch_size=4)
    handler_before = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted, match="Run the same command again"):
        train(config, callbacks=[CtrlCAtStep3()])
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-3").is_dir()
    assert signal.getsignal(signal.SIGINT) is handler_before

    changed = _config(
        tiny_phi3_hf, qa_file, tmp_path / "run", method="lora", epochs=2, batch_size=4, seed=7
    )
    with pytest.raises(UserFacingError, match="seed: 42 then, 7 now"):
        train(changed)

    result = train(config)
    assert result.resumed_from is not None and result.resumed_from.endswith("checkpoint-3")
    assert result.global_step == 12  # 22 train examples / 4 per step = 6 steps per epoch, 2 epochs
    steps = [
        json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == sorted(steps) and 4 in steps and 3 in steps
    with pytest.raises(UserFacingError, match="already holds a finished adapter"):
        train(config)


def test_bad_data_fails_before_the_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from appliance.cli import main

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")  # not loadable: proves nothing was loaded
    rc = main(["train", "--base", str(base), "--data", str(bad), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "bad.jsonl:1: no assistant turn" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_settings_precedence_and_errors(tmp_path: Path) -> None:
    cfg_file = tmp_path / "plant.toml"
    cfg_file.write_text('method = "qlora"\nrank = 8\nepochs = 5\n')
    values = read_config_file(cfg_file)
    config = resolve_config(
        values, {"base": "b", "data": "d", "out": "o", "rank": 32, "alpha": None}
    )
    assert (config.method, config.rank, config.epochs, config.alpha) == ("qlora", 32, 5, 16)
    assert config.dropout == 0.1 and config.learning_rate == 2e-4  # QLoRA defaults
    lora = TrainConfig(base="b", data="d", out="o")
    assert (lora.rank, lora.alpha, lora.target_modules) == (16, 32, "all-linear")

    (tmp_path / "typo.toml").write_text("learning_rat = 1e-4\n")
    with pytest.raises(ConfigError, match="unknown setting.*learning_rat"):
        read_config_file(tmp_path / "typo.toml")
    with pytest.raises(ConfigError, match="rank: got 0"):
        TrainConfig(base="b", data="d", out="o", rank=0)
    with pytest.raises(ConfigError, match="overlong"):
        TrainConfig(base="b", data="d", out="o", overlong="cut")
    with pytest.raises(ConfigError, match="missing required setting.*base"):
        resolve_config({}, {"data": "d", "out": "o"})
    assert TrainConfig(
        base="b", data="d", out="o", target_modules="q_proj, v_proj"
    ).target_modules == [
        "q_proj",
        "v_proj",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_smollm2_few_steps_lower_the_loss(smollm2_hf: Path, tmp_path: Path, method: str) -> None:
    """A few steps on SmolLM2-135M (tied embeddings, Llama architecture); ~1-3 min per method."""
    from tests.trainer.trainer_samples import qa_records
    from trainer.train import train

    data = write_jsonl(tmp_path / "train.jsonl", qa_records()[:10])  # 9 train, 1 eval
    config = TrainConfig(
        base=smollm2_hf,
        data=data,
        out=tmp_path / method,
        method=method,
        epochs=2,
        batch_size=5,
        rank=8,
        learning_rate=2e-3,
        logging_steps=1,
        early_stopping_patience=0,
        gradient_checkpointing=method == "qlora",
    )
    result = train(config)
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert result.global_step == 4
    assert losses[-1] < losses[0]
    assert result.eval_loss < result.eval_loss_before
