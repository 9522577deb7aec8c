"""Trainer test fixtures: small chat data files. Models come from tests/conftest.py.

Run: .venv/bin/pytest tests/trainer
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.trainer.trainer_samples import TINY, qa_records, write_jsonl


@pytest.fixture
def qa_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "train.jsonl", qa_records())


@pytest.fixture(scope="session")
def trained(tiny_phi3_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One LoRA and one QLoRA run on the tiny Phi-3, shared by test_train and test_merge."""
    from trainer.config import TrainConfig
    from trainer.train import train

    root = tmp_path_factory.mktemp("trained")
    data = write_jsonl(root / "train.jsonl", qa_records())

    def run(method: str, **kw) -> object:
        return train(
            TrainConfig(
                base=tiny_phi3_hf, data=data, out=root / method, method=method, **{**TINY, **kw}
            )
        )

    return {"lora": run("lora", epochs=3), "qlora": run("qlora", epochs=2, rank=16), "data": data}
