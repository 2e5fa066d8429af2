"""End to end at the default stride, against a brute force written from the README's rule.

The README promises: the first window scores the first ``context`` tokens, each
with all of its preceding tokens; every later window scores the next ``stride``
tokens (default: half the context), filled to ``context`` with the tokens before
them, the last one included. So token ``i`` of a document is predicted from
``seq[first(i) : i + 1]`` (``seq`` is the prefix token, then the document), where
``first(i)`` is 0 in the first window and ``end - context`` otherwise, ``end``
being where the window holding ``i`` stops. :func:`context_start` computes that
in closed form, without :func:`bpbeval.scoring.rolling_windows`, and the brute
force runs the model once per token on exactly that input, summing in float64.

The second half is a float64-sensitive case: per-token nats of 1024 and of
6e-6, arranged so that every float32 sum on the way (a window's row, a document's
running total, the totals over documents, the metric's state) drops the small
ones, while float64 keeps them.
"""

from __future__ import annotations

import importlib
import json
import math
import pydoc_data.topics

import pytest
import torch
import torch.nn.functional as F

from bpbeval import BitsPerByte
from bpbeval.checkpoint import Checkpoint, load
from bpbeval.data import Document
from bpbeval.eval import main as eval_main
from bpbeval.scoring import score_documents


def context_start(i: int, n_tokens: int, context_len: int, stride: int) -> int:
    """Where in ``seq`` the input that scores token ``i`` begins (the README's rule).

    Example:
        >>> [context_start(i, 10, 4, 2) for i in range(10)]
        [0, 0, 0, 0, 2, 2, 4, 4, 6, 6]
        >>> [context_start(i, 9, 4, 2) for i in range(9)]  # the last window is backfilled
        [0, 0, 0, 0, 2, 2, 4, 4, 5]
    """
    if i < context_len:
        return 0
    window = (i - context_len) // stride  # later windows: context + k * stride onwards
    end = min(context_len + (window + 1) * stride, n_tokens)
    return end - context_len


def brute_force_token_nats(
    logits_of, bos_id: int, ids: list[int], context_len: int, stride: int
) -> list[float]:
    """float64 nats of each token, predicted from exactly the context the rule promises.

    Inputs of one length go through the model in one batch: a causal model gives
    each row the same logits alone or stacked.
    """
    seq = [bos_id, *ids]
    inputs = [seq[context_start(i, len(ids), context_len, stride) : i + 1] for i in range(len(ids))]
    nats = [0.0] * len(ids)
    by_length: dict[int, list[int]] = {}
    for i, row in enumerate(inputs):
        by_length.setdefault(len(row), []).append(i)
    with torch.no_grad():
        for positions in by_length.values():
            logits = logits_of(torch.tensor([inputs[i] for i in positions]))[:, -1]
            logprobs = F.log_softmax(logits.double(), dim=-1)
            for row, i in enumerate(positions):
                nats[i] = -float(logprobs[row, ids[i]])
    return nats


@pytest.fixture(scope="module")
def long_documents() -> list[Document]:
    """Documents of 2 to 20+ windows at context 16, with last windows of every fill."""
    topics = [text for _, text in sorted(pydoc_data.topics.topics.items())[60:68]]
    texts = [text[: 150 + 97 * i] for i, text in enumerate(topics)]
    texts.append("naïve café — 日本語のテキスト 🙂 " * 6)  # multi-byte characters across windows
    return [Document(f"long{i}", text, None) for i, text in enumerate(texts)]


@pytest.fixture(scope="module")
def models(native_checkpoint, hf_checkpoint, byte_tokenizer, make_gpt, context_len):
    """name -> (checkpoint to score, logits function of the original model, path for the CLI)."""
    native_path, native_model = native_checkpoint
    hf_path, hf_model = hf_checkpoint
    byte_model = make_gpt(byte_tokenizer.vocab_size, seed=3)
    return {
        "native": (load(str(native_path)), native_model, str(native_path)),
        "hf": (load(str(hf_path)), lambda ids: hf_model(ids).logits, str(hf_path)),
        "byte_level": (
            Checkpoint(byte_model, byte_tokenizer, context_len, "b", "custom", "t"),
            byte_model,
            None,
        ),
    }


@pytest.mark.parametrize("which", ["native", "hf", "byte_level"])
def test_default_stride_gives_each_token_its_promised_context(
    which, models, long_documents, context_len, tmp_path
):
    checkpoint, logits_of, path = models[which]
    tokenizer = checkpoint.tokenizer
    stride = context_len // 2
    encoded = tokenizer.encode_batch([d.text for d in long_documents])
    # The premise: several windows each, and last windows that are not full strides.
    assert min(map(len, encoded)) > 3 * context_len
    assert len({(len(ids) - context_len) % stride for ids in encoded}) >= 3

    scores = score_documents(checkpoint, long_documents, batch_size=4, progress=False)
    references = []
    for doc, score, ids in zip(long_documents, scores.documents, encoded, strict=True):
        reference = math.fsum(
            brute_force_token_nats(logits_of, tokenizer.bos_id, ids, context_len, stride)
        )
        references.append(reference)
        assert score.nats == pytest.approx(reference, rel=1e-6), doc.id
        assert (score.tokens, score.bytes) == (len(ids), len(doc.text.encode("utf-8")))
    total_bytes = sum(len(d.text.encode("utf-8")) for d in long_documents)
    assert scores.nats == pytest.approx(math.fsum(references), rel=1e-6)
    assert scores.bytes == total_bytes

    if path is not None:  # the command line gives the same figures
        data, out = tmp_path / "docs.jsonl", tmp_path / "out.json"
        data.write_text("".join(json.dumps({"text": d.text}) + "\n" for d in long_documents))
        assert eval_main([path, "--data", str(data), "--json", str(out), "--device", "cpu"]) == 0
        written = json.loads(out.read_text())
        expected = math.fsum(references) / (math.log(2) * total_bytes)
        assert written["bits_per_byte"] == pytest.approx(expected, rel=1e-6)
        assert written["bytes"] == total_bytes


# A model whose loss is 1024 nats where the next byte differs from the current one and
# log(1 + e^-12) ~ 6e-6 where it repeats it. Written as a loader module, so that the
# command line and the tests run the same code.
SHARP_LOADER = """
import torch
from bpbeval.tokenizer import train

class Sharp(torch.nn.Module):
    def __init__(self, vocab_size, near):
        super().__init__()
        self.vocab_size, self.near = vocab_size, near

    def forward(self, ids):
        logits = torch.full((*ids.shape, self.vocab_size), -1024.0)
        logits[..., self.near] = -12.0  # the only other id within reach: a tiny loss
        return logits.scatter(-1, ids[..., None], 0.0)  # the current id comes next

def load(spec):
    tokenizer = train([], vocab_size=256 + 9)
    return Sharp(tokenizer.vocab_size, tokenizer.bos_id), tokenizer, 16
"""


@pytest.fixture(scope="module")
def sharp(tmp_path_factory):
    """The loader module on ``sys.path``: gives (module, its directory)."""
    directory = tmp_path_factory.mktemp("sharp")
    (directory / "sharp_loader.py").write_text(SHARP_LOADER)
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(directory))
        yield importlib.import_module("sharp_loader"), directory


def test_sums_are_float64_where_float32_would_drop_the_small_losses(sharp, tmp_path):
    module, _ = sharp
    model, tokenizer, context_len = module.load("x")
    stride = context_len // 2
    letters = "abcdefghijklmnopqrstuvwxyz"
    # Runs of 8 equal letters: each window of 8 holds one 1024-nat change and 7 tiny repeats.
    texts = [
        "".join(letters[(k + j) % 26] * 8 for j in range(n)) for k, n in enumerate((420, 333, 250))
    ]
    documents = [Document(f"sharp{i}", text, None) for i, text in enumerate(texts)]
    checkpoint = Checkpoint(model, tokenizer, context_len, "sharp", "custom", "sharp")

    # The reference: each token's float32 nats (the model's own loss, as torch computes it)
    # added in float64, exactly rounded.
    per_token = []
    for ids in tokenizer.encode_batch(texts):
        seq = torch.tensor([tokenizer.bos_id, *ids])
        with torch.no_grad():
            nats = F.cross_entropy(model(seq[None, :-1])[0], seq[1:], reduction="none")
        per_token.append(nats)
    reference = [math.fsum(nats.tolist()) for nats in per_token]
    total_bytes = sum(map(len, texts))

    # The premise: in float32, a window's sum is its 1024 alone, and a document's too.
    window = per_token[0][context_len : context_len + stride]
    assert sorted(set(window.tolist())) == [window.min().item(), 1024.0]
    assert float(window.sum()) == 1024.0 != math.fsum(window.tolist())
    for nats, exact in zip(per_token, reference, strict=True):
        assert abs(float(nats.sum()) - exact) > 3e-8 * exact

    scores = score_documents(checkpoint, documents, batch_size=3, progress=False)
    for score, exact in zip(scores.documents, reference, strict=True):
        assert score.nats == pytest.approx(exact, rel=1e-12, abs=0)
    assert scores.nats == pytest.approx(math.fsum(reference), rel=1e-12, abs=0)
    assert scores.bits_per_byte == pytest.approx(
        math.fsum(reference) / (math.log(2) * total_bytes), rel=1e-12, abs=0
    )

    # The metric's state, fed a window at a time as a training loop would.
    metric = BitsPerByte(tokenizer.token_bytes())
    for nats, ids in zip(per_token, tokenizer.encode_batch(texts), strict=True):
        for start in range(0, len(ids), stride):
            metric.update(nats[start : start + stride], torch.tensor(ids[start : start + stride]))
    assert metric.compute_all().nats.item() == pytest.approx(math.fsum(reference), rel=1e-12, abs=0)

    # And the command line.
    data, out = tmp_path / "sharp.jsonl", tmp_path / "sharp.json"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    argv = ["x", "--loader", "sharp_loader:load", "--data", str(data), "--json", str(out)]
    assert eval_main([*argv, "--device", "cpu"]) == 0
    assert json.loads(out.read_text())["bits_per_byte"] == pytest.approx(
        scores.bits_per_byte, rel=1e-15, abs=0
    )
