"""Drop-ins for the frameworks people train with.

- :mod:`bpbeval.integrations.huggingface`: ``compute_metrics`` and
  ``preprocess_logits_for_metrics`` for the Hugging Face ``Trainer`` (needs ``bpbeval[hf]``).
- :mod:`bpbeval.integrations.nanochat`: nanochat's ``evaluate_bpb`` with exact totals, and its
  ``token_bytes.pt`` written from the exact table.

Lightning needs no module: ``self.log("val/bpb", metric)`` with a :class:`~bpbeval.BitsPerByte`
is all it takes (``examples/lightning_bpb.py``). Each module is imported on its own, so none
pulls in another framework.
"""
