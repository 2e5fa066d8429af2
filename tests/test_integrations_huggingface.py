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

CONTEXT = 11  # bpbeval's windows; the Trainer's rows hold one more token, the first target
POSITIONS = 16  # the tiny GPT-2's: room for rows padded to 5 different lengths
BATCH = 4  # rows per eval batch


def trainer_rows(tokenizer, texts: list[str], *, stride: int) -> list[dict]:
    """bpbeval's rolling windows as causal-LM rows: labels -100 except the tokens each scores.

    A window reads ``seq[begin:end]`` and scores ``seq[start + 1 : end + 1]``; a causal LM
    row holds its inputs and targets in one sequence, so it is ``seq[begin : end + 1]``.
    Batches of rows are padded to lengths from ``CONTEXT + 1`` to ``POSITIONS`` in turn, so
    they differ in length as under a collator that pads to the longest row of each batch.
    """
    adapted = from_huggingface(tokenizer)
    rows = []
    for ids in adapted.encode_batch(texts):
        seq = [adapted.bos_id, *ids]
        for begin, start, end in rolling_windows(len(ids), context_len=CONTEXT, stride=stride):
            inputs = seq[begin : end + 1]
            labels = [-100] * (start - begin + 1) + inputs[start - begin + 1 :]
            length = CONTEXT + 1 + len(rows) // BATCH % (POSITIONS - CONTEXT)
            pad = length - len(inputs)
            rows.append({
                "input_ids": torch.tensor(inputs + [adapted.bos_id] * pad),
                "labels": torch.tensor(labels + [-100] * pad),
            })  # fmt: skip
    return rows


def shapes(arrays) -> list[tuple[int, ...]]:
    """The shape of each batch's array: one array, or a list of them."""
    return [tuple(a.shape) for a in (arrays if isinstance(arrays, list) else [arrays])]


def evaluate(model, tokenizer, rows, tmp_path, **arguments):
    """``Trainer.evaluate`` with the metric; also the shapes ``compute_metrics`` was handed."""
    bpb = TrainerBitsPerByte(tokenizer)
    seen = []

    def compute_metrics(prediction, compute_result=True):
        seen.append(
            list(zip(shapes(prediction.predictions), shapes(prediction.label_ids), strict=True))
        )
        return bpb.compute_metrics(prediction, compute_result=compute_result)

    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_eval_batch_size=BATCH,
        **arguments,
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


MODES = {  # how the Trainer hands predictions to compute_metrics
    "per_batch": {"batch_eval_metrics": True},  # each batch's tensors, as it goes
    "concatenated": {},  # one array of the whole set, padded with -100 to its longest row
    "list_of_batches": {"eval_do_concat_batches": False},  # a list of each batch's arrays
}


@pytest.mark.parametrize("mode", MODES)
def test_trainer_evaluate_equals_bpbeval_eval(
    tmp_path, hf_checkpoint, documents, documents_jsonl, mode
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
    rows = trainer_rows(tokenizer, [d.text for d in documents], stride=stride)
    assert max(len(row["input_ids"]) for row in rows) == model.config.n_positions
    metrics, seen = evaluate(model, tokenizer, rows, tmp_path / "trainer", **MODES[mode])

    assert metrics["eval_bits_per_byte"] == pytest.approx(expected["bits_per_byte"], rel=1e-9)
    assert metrics["eval_bits_per_token"] == pytest.approx(expected["bits_per_token"], rel=1e-9)
    assert metrics["eval_bytes_per_token"] == pytest.approx(expected["bytes_per_token"], rel=1e-12)
    # What the Trainer handed over has no vocabulary dimension: per-token nats, one row per
    # sequence, T - 1 positions for labels of T.
    batches = [
        ((len(batch), len(batch[0]["labels"]) - 1), (len(batch), len(batch[0]["labels"])))
        for batch in (rows[i : i + BATCH] for i in range(0, len(rows), BATCH))
    ]
    longest = max(labels[1] for _, labels in batches)
    handed = {
        "per_batch": [[batch] for batch in batches],
        "concatenated": [[((len(rows), longest - 1), (len(rows), longest))]],
        "list_of_batches": [batches],
    }
    assert seen == handed[mode]
