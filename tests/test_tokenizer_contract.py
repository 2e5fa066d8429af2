"""``Tokenizer.token_bytes``'s contract: a fresh int32 tensor on the device asked for.

Written to kill the mutants ``make mutate`` found surviving in ``token_bytes`` (see
TESTING.md); the "meta" device stands in for an accelerator on a CPU-only machine.
"""

from __future__ import annotations

import torch


def test_token_bytes_goes_to_the_device_asked_for(bpe_tokenizer):
    on_cpu = bpe_tokenizer.token_bytes()
    assert (on_cpu.device.type, on_cpu.dtype) == ("cpu", torch.int32)
    for device in ("meta", torch.device("meta")):
        moved = bpe_tokenizer.token_bytes(device)
        assert (moved.device.type, moved.dtype, moved.shape) == ("meta", torch.int32, on_cpu.shape)


def test_token_bytes_is_a_copy_the_caller_may_change(bpe_tokenizer):
    # Each token's bytes, from its raw bytes: the special tokens have none.
    specials = set(bpe_tokenizer.special_tokens.values())
    expected = [
        0 if i in specials else len(bpe_tokenizer.encoding.decode_single_token_bytes(i))
        for i in range(bpe_tokenizer.vocab_size)
    ]
    table = bpe_tokenizer.token_bytes()
    assert table.tolist() == expected and max(expected) > 1
    table.zero_()
    assert bpe_tokenizer.token_bytes().tolist() == expected
