"""Hugging Face Trainer: the supported way in is ``model.compile(backend="fqt")`` before
``Trainer(model=...)`` (accelerate's ``torch_compile_backend`` accepts only its own list of
names). A small BERT for sequence classification trains with gradient checkpointing on, and the
plan shows its GEMMs quantized, LUQ on the gradients, under activation checkpointing."""

from __future__ import annotations

import pytest
import torch

import qcompile
from qcompile.testing.models import tiny_bert

pytest.importorskip("accelerate")


class _Pairs(torch.utils.data.Dataset):
    """Sequences labelled by whether token 1 occurs more often than token 2: made here, no download."""

    def __init__(self, n: int = 64, length: int = 8) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, 3, (n, length), generator=g)
        self.labels = ((self.ids == 1).sum(1) > (self.ids == 2).sum(1)).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


@pytest.mark.slow
def test_trainer_with_a_compiled_bert_and_gradient_checkpointing(tmp_path):
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    model = tiny_bert()
    model.compile(backend="fqt")  # in place: Trainer keeps the module, the forward is compiled
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=6, learning_rate=1e-3,
        activation_checkpointing=True, logging_steps=1, report_to=[], save_strategy="no",
        use_cpu=True, dataloader_num_workers=0,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=_Pairs())
    result = trainer.train()
    assert result.global_step == 6 and torch.isfinite(torch.tensor(result.training_loss))
    plan = qcompile.plan(model)
    quantized = [r for r in plan.rows if r.weight.ran and r.weight.spec.bits == 4]
    assert len(quantized) >= 8
    assert all(r.grad_dgrad.spec.format == "luq" for r in quantized if r.grad_dgrad.ran)
    assert all("activation checkpointing" in r.reason for r in plan.rows if "encoder" in r.layer)
