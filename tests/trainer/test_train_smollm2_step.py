# Run: .venv/bin/pytest tests/trainer/test_train_smollm2_step.py      (part of make test)
"""One real LoRA step on SmolLM2-135M, the model the README's training figures are about.

The tiny-Phi-3 tests prove that training learns; this one proves the same code runs on the
real model (Llama architecture, tied embeddings, the imported GGUF checkpoint): the step moves
the adapter, the adapter is saved with its training record, and the trainer's merge folds it
into a checkpoint whose logits match the unmerged model. The multi-step loss-decrease runs on
SmolLM2 (LoRA and QLoRA) stay `slow`: tests/trainer/test_train.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.trainer.trainer_samples import qa_records, write_jsonl
from trainer.config import TrainConfig

pytestmark = pytest.mark.claim


def test_one_lora_step_on_smollm2_moves_saves_and_merges(smollm2_hf: Path, tmp_path: Path):
    from safetensors.numpy import load_file

    from trainer.merge import merge_adapter
    from trainer.train import ADAPTER_META, train

    data = write_jsonl(tmp_path / "train.jsonl", qa_records()[:5])  # 4 to train, 1 to eval
    out = tmp_path / "adapter"
    config = TrainConfig(
        base=smollm2_hf,
        data=data,
        out=out,
        method="lora",
        max_steps=1,
        batch_size=4,
        rank=8,
        learning_rate=2e-3,
        warmup_ratio=0.0,  # with warm-up, the only step would run at learning rate 0
        eval_fraction=0.2,
        logging_steps=1,
        early_stopping_patience=0,
        gradient_checkpointing=False,
    )
    result = train(config)
    assert result.global_step == 1
    assert math.isfinite(result.eval_loss_before) and math.isfinite(result.eval_loss)
    # LoRA's B matrices start at zero: after one step they must not all be zero any more.
    weights = load_file(str(out / "adapter_model.safetensors"))
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    assert lora_b and max(float(np.abs(w).max()) for w in lora_b) > 0
    meta = json.loads((out / ADAPTER_META).read_text())
    assert meta["method"] == "lora" and meta["base"]["architecture"] == "LlamaForCausalLM"

    record = merge_adapter(smollm2_hf, out, tmp_path / "merged", dtype="fp32", verify=True)
    assert record["verify_max_abs_logit_diff"] < 1e-3
    assert (tmp_path / "merged" / "model.safetensors").is_file()
