"""Bits per byte in the Hugging Face ``Trainer``, without gathering any logits.

By default ``Trainer.evaluate`` gathers the logits of the whole eval set on the host before
``compute_metrics`` sees them: tokens x vocabulary floats. :class:`TrainerBitsPerByte` turns
each batch's logits into per-token nats in ``preprocess_logits_for_metrics``, so the Trainer
keeps [B, T] floats at most; with ``TrainingArguments(batch_eval_metrics=True)`` it keeps
nothing, and ``compute_metrics`` adds each batch to a :class:`~bpbeval.BitsPerByte`.

    bpb = TrainerBitsPerByte(tokenizer)
    trainer = Trainer(
        model, TrainingArguments(..., batch_eval_metrics=True), eval_dataset=val,
        preprocess_logits_for_metrics=bpb.preprocess_logits_for_metrics,
        compute_metrics=bpb.compute_metrics,
    )
    trainer.evaluate()  # {"eval_bits_per_byte": ..., "eval_bits_per_token": ..., ...}
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bpbeval.losses import token_nats
from bpbeval.metric import BitsPerByte
from bpbeval.tokenizer.adapters import from_huggingface


class TrainerBitsPerByte:
    """``preprocess_logits_for_metrics`` and ``compute_metrics`` for a causal LM ``Trainer``.

    Labels are the Trainer's causal-LM labels: the input ids, -100 where not scored
    (padding, prompts); position ``t`` predicts label ``t + 1``, as in the models' own loss.
    Tokens of 0 bytes (special tokens) are not scored, as in :class:`~bpbeval.BitsPerByte`.

    Args:
        tokenizer: the model's tokenizer (a transformers fast tokenizer or a
            ``tokenizers.Tokenizer``); its exact ``token_bytes`` come from
            :func:`bpbeval.tokenizer.from_huggingface`.

    Raises:
        TokenizerError: the tokenizer's byte counts cannot be known (not a fast tokenizer,
            WordPiece).

    Example:
        >>> from transformers.trainer_utils import EvalPrediction
        >>> from tokenizers import Tokenizer, models, pre_tokenizers
        >>> hf = Tokenizer(models.BPE({c: i for i, c in enumerate(sorted("abc"))}, []))
        >>> hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        >>> _ = hf.add_special_tokens(["<|endoftext|>"])  # id 3, 0 bytes
        >>> bpb = TrainerBitsPerByte(hf)
        >>> labels = torch.tensor([[3, 0, 1, -100]])
        >>> nats = bpb.preprocess_logits_for_metrics(torch.zeros(1, 4, 4), labels)
        >>> nats  # uniform over 4 ids: ln 4 per predicted token, 0 where the label is -100
        tensor([[1.3863, 1.3863, 0.0000]])
        >>> metrics = bpb.compute_metrics(EvalPrediction(nats, labels), compute_result=True)
        >>> round(metrics["bits_per_byte"], 6), metrics["bytes_per_token"]  # 1-byte tokens
        (2.0, 1.0)
        >>> # eval_do_concat_batches=False: one array per batch, each of its own length
        >>> batches = EvalPrediction([nats, nats[:, :1]], [labels, labels[:, :2]])
        >>> round(bpb.compute_metrics(batches)["bits_per_byte"], 6)
        2.0
    """

    def __init__(self, tokenizer: Any) -> None:
        # Every rank gets the whole batch (the Trainer gathers predictions before
        # compute_metrics), so the totals are already global: syncing would count each
        # batch once per rank.
        self.metric = BitsPerByte(
            from_huggingface(tokenizer).token_bytes(), validate_args=False, sync_on_compute=False
        )

    def preprocess_logits_for_metrics(self, logits: Tensor | tuple[Tensor, ...], labels: Tensor):
        """Per-token nats [B, T - 1] (float32) of a batch's logits [B, T, V] against its labels."""
        if isinstance(logits, tuple):  # models that also return hidden states or caches
            logits = logits[0]
        if labels is None:
            raise ValueError(
                "bits per byte needs labels: give the eval dataset a 'labels' column "
                "(the input ids, -100 where not scored)"
            )
        return token_nats(logits[:, :-1], labels[:, 1:])

    def compute_metrics(
        self, eval_prediction: Any, compute_result: bool = True
    ) -> dict[str, float]:
        """Add a batch (or, without ``batch_eval_metrics``, the whole eval set) to the metric.

        Without ``batch_eval_metrics`` the eval set comes as one array, or with
        ``eval_do_concat_batches=False`` as a list of per-batch arrays (each of its own
        sequence length); either way every batch is added, with the same result.

        Returns the figures on the last batch (``compute_result``) and starts afresh; an
        empty dict before that.
        """
        predictions, label_ids = eval_prediction.predictions, eval_prediction.label_ids
        if not isinstance(predictions, list):
            predictions, label_ids = [predictions], [label_ids]
        for batch_nats, batch_labels in zip(predictions, label_ids, strict=True):
            nats = torch.as_tensor(batch_nats)
            target = torch.as_tensor(batch_labels, device=nats.device)[:, 1:]
            if self.metric.device != nats.device:
                self.metric.to(nats.device)
            self.metric.update(nats, target)
        if not compute_result:
            return {}
        result = self.metric.compute_all()
        self.metric.reset()
        return {
            "bits_per_byte": result.bits_per_byte.item(),
            "bits_per_token": result.bits_per_token.item(),
            "bytes_per_token": result.bytes_per_token.item(),
        }
