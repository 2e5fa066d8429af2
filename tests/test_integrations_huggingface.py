"""The Hugging Face ``Trainer`` reports exact bpb through ``TrainerBitsPerByte``, no logits held."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("accelerate")  # the Trainer needs it; bpbeval[test] installs it
from transformers import AutoTokenizer, GPT2LMHeadModel, Trainer, TrainingArguments

from bpbeval import eval as bpbeval_eval
from bpbeval.integrations.huggingface import TrainerBitsPerByte
from bpbeval.scoring import rolling_windows
from bpbeval.tokenizer import from_huggingface

CONTEXT = 15  # bpbeval's windows; the Trainer's rows hold one more token, the first target


def trainer_rows(tokenizer, texts: list[str], *, stride: int, length: int) -> list[dict]:
    """bpbeval's rolling windows as causal-LM rows: labels -100 except the tokens each scores.

    A window reads ``seq[begin:end]`` and scores ``seq[start + 1 : end + 1]``; a causal LM
    row holds its inputs and targets in one sequence, so it is ``seq[begin : end + 1]``.
    """
    adapted = from_huggingface(tokenizer)
    rows = []
    for ids in adapted.encode_batch(texts):
        seq = [adapted.bos_id, *ids]
        for begin, start, end in rolling_windows(len(ids), context_len=CONTEXT, stride=stride):
            inputs = seq[begin : end + 1]
            labels = [-100] * (start - begin + 1) + inputs[start - begin + 1 :]
            pad = length - len(inputs)
            rows.append({
                "input_ids": torch.tensor(inputs + [adapted.bos_id] * pad),
                "labels": torch.tensor(labels + [-100] * pad),
            })  # fmt: skip
    return rows


def evaluate(model, tokenizer, rows, tmp_path, *, batch_eval_metrics: bool):
    """``Trainer.evaluate`` with the metric; also what ``compute_metrics`` was handed."""
    bpb = TrainerBitsPerByte(tokenizer)
    seen = []

    def compute_metrics(prediction, compute_result=True):
        seen.append((tuple(prediction.predictions.shape), tuple(prediction.label_ids.shape)))
        return bpb.compute_metrics(prediction, compute_result=compute_result)

    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_eval_batch_size=4,
        batch_eval_metrics=batch_eval_metrics,
        report_to=[],
        use_cpu=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        eval_dataset=rows,
        preprocess_logits_for_metrics=bpb.preprocess_logits_for_metrics,
        compute_metrics=compute_metrics,
    )
    return trainer.evaluate(), seen


@pytest.mark.parametrize("batch_eval_metrics", [True, False])
def test_trainer_evaluate_equals_bpbeval_eval(
    tmp_path, hf_checkpoint, documents, documents_jsonl, batch_eval_metrics
):
    # In float64, so that the logits of a window do not depend on the length of the
    # sequence it sits in (the Trainer's rows are one token longer than bpbeval's windows):
    # in float32 that alone moves bpb by ~1e-9, which would hide a real discrepancy.
    source, _ = hf_checkpoint
    path = tmp_path / "gpt2-float64"
    GPT2LMHeadModel.from_pretrained(source, local_files_only=True).double().save_pretrained(path)
    AutoTokenizer.from_pretrained(source, local_files_only=True).save_pretrained(path)
    stride = 7
    out = tmp_path / "eval.json"
    argv = [str(path), "--data", str(documents_jsonl), "--json", str(out),
            "--context", str(CONTEXT), "--stride", str(stride), "--batch-size", "4"]  # fmt: skip
    assert bpbeval_eval.main(argv) == 0
    expected = json.loads(out.read_text())

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = GPT2LMHeadModel.from_pretrained(path, local_files_only=True).eval()
    assert model.dtype == torch.float64
    length = model.config.n_positions
    rows = trainer_rows(tokenizer, [d.text for d in documents], stride=stride, length=length)
    metrics, seen = evaluate(
        model, tokenizer, rows, tmp_path / "trainer", batch_eval_metrics=batch_eval_metrics
    )

    assert metrics["eval_bits_per_byte"] == pytest.approx(expected["bits_per_byte"], rel=1e-9)
    assert metrics["eval_bits_per_token"] == pytest.approx(expected["bits_per_token"], rel=1e-9)
    assert metrics["eval_bytes_per_token"] == pytest.approx(expected["bytes_per_token"], rel=1e-12)
    # What the Trainer handed over has no vocabulary dimension: per-token nats, one row per
    # sequence, one batch at a time with batch_eval_metrics, else the whole set once.
    vocab = model.config.vocab_size
    sizes = [len(rows[i : i + 4]) for i in range(0, len(rows), 4)]
    assert [labels[0] for _, labels in seen] == (sizes if batch_eval_metrics else [len(rows)])
    for predictions, labels in seen:
        assert predictions == (labels[0], length - 1)
        assert labels == (labels[0], length)
        assert vocab not in predictions
