"""compare explains a gap it is given: two models that differ only on digit tokens."""

from __future__ import annotations

import json
import math
import pydoc_data.topics

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from bpbeval.attribution import CLASSES, POSITIONS
from bpbeval.checkpoint import save
from bpbeval.cli import run
from bpbeval.compare import main
from tests.conftest import CONTEXT, tiny_gpt


class DigitsBetter(torch.nn.Module):
    """``base`` with half the probability it gives the special tokens moved to the digits.

    Special tokens have no bytes, so they are never scored: every token that is scored
    keeps its probability under ``base``, except the digits, whose probability grows
    (each in proportion to its own). The two models differ on digit tokens only.
    """

    def __init__(self, base: torch.nn.Module, digits: list[int], specials: list[int]) -> None:
        super().__init__()
        self.base = base
        self.register_buffer("digits", torch.tensor(digits))
        self.register_buffer("specials", torch.tensor(specials))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(self.base(ids).float(), dim=-1)
        p = logp.exp()
        special, digit = p[..., self.specials], p[..., self.digits]
        moved = special.sum(-1, keepdim=True) / 2
        out = logp.clone()  # log-probabilities are logits of the same distribution
        out[..., self.specials] = torch.log(special / 2)
        out[..., self.digits] = torch.log(digit + moved * digit / digit.sum(-1, keepdim=True))
        return out


@pytest.fixture(scope="module")
def compared(tmp_path_factory, byte_tokenizer) -> tuple[dict, dict, list[str]]:
    """compare A (a tiny GPT) against B (the same, better on digits): JSON, per-doc table and
    the command line."""
    root = tmp_path_factory.mktemp("digits")
    base = tiny_gpt(byte_tokenizer.vocab_size, seed=3)
    digits = byte_tokenizer.encode("0123456789")
    specials = [i for i, n in enumerate(byte_tokenizer.token_bytes().tolist()) if n == 0]
    save(root / "plain", base, byte_tokenizer, CONTEXT)
    save(root / "digits", DigitsBetter(base, digits, specials), byte_tokenizer, CONTEXT)
    topics = [text for _, text in sorted(pydoc_data.topics.topics.items())[:60]]
    rows = [
        {"text": f"{text[: 100 + 5 * i]} in {1900 + 7 * i}, {i * 7919 % 1000} of {i + 40}"}
        for i, text in enumerate(topics)
    ]
    (root / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    argv = [str(root / "plain"), str(root / "digits"), "--data", str(root / "docs.jsonl"),
            "--device", "cpu", "--bootstrap", "500", "--json", str(root / "out.json"),
            "--per-doc", str(root / "docs.parquet")]  # fmt: skip
    with pytest.raises(SystemExit) as info:
        run(main, argv)
    assert info.value.code == 0
    result = json.loads((root / "out.json").read_text())
    return result, pq.read_table(root / "docs.parquet").to_pydict(), argv


def test_the_gap_shows_in_the_digits_and_nowhere_else(compared):
    result, _, _ = compared
    classes = result["classes"]
    digits = classes["digits"]
    assert digits["delta_bpb"] > 0.05  # A − B: B is better on digits
    assert 0 < digits["ci"][0] <= digits["delta_bpb"] <= digits["ci"][1]
    others = {name: c for name, c in classes.items() if name != "digits"}
    assert {"ascii_letters", "whitespace", "ascii_punctuation"} <= set(others)
    for name, part in others.items():
        # Unchanged probabilities, up to float32 rounding of the log-probabilities.
        assert abs(part["delta_bpb"]) < 1e-5, name
        assert part["ci"] is None or max(map(abs, part["ci"])) < 1e-5, name
    assert result["overall"]["verdict"].startswith("B is better by")


@pytest.mark.parametrize("key", ["classes", "positions"])
def test_the_parts_add_up_to_the_whole(compared, key):
    # Pooled Δbpb is the byte-weighted sum of the parts' Δbpb; bytes and nats add up exactly.
    result, _, _ = compared
    parts = result[key]
    assert set(parts) <= set(CLASSES if key == "classes" else POSITIONS)
    models = result["models"]
    assert sum(p["bytes"] for p in parts.values()) == models["A"]["bytes"]
    for model, column in (("A", "nats_a"), ("B", "nats_b")):
        assert math.fsum(p[column] for p in parts.values()) == pytest.approx(
            models[model]["nats"], rel=1e-12
        )
    weighted = math.fsum(p["share"] * p["delta_bpb"] for p in parts.values())
    assert weighted == pytest.approx(result["overall"]["delta_bpb"], rel=1e-9)


def test_per_document_class_columns_add_up_to_each_document(compared):
    _, table, _ = compared
    for model in ("a", "b"):
        per_class = np.array([table[f"nats_{model}_{name}"] for name in CLASSES]).sum(axis=0)
        np.testing.assert_allclose(per_class, table[f"nats_{model}"], rtol=1e-9, atol=1e-12)
    per_class_bytes = np.array([table[f"bytes_{name}"] for name in CLASSES]).sum(axis=0)
    assert per_class_bytes.tolist() == table["bytes"]
    digits = np.array(table["bytes_digits"])
    assert (digits > 0).all()  # every document has digits: the interval rests on all 60


def test_the_documents_listed_each_way_are_the_extremes_of_the_per_document_table(compared):
    result, table, _ = compared
    ln2 = math.log(2)
    bpb = {
        doc: (a / (ln2 * n), b / (ln2 * n))
        for doc, a, b, n in zip(
            table["id"], table["nats_a"], table["nats_b"], table["bytes"], strict=True
        )
    }
    lists = result["documents"]
    # B is better on every document (its digits), so no document lists A as the winner.
    assert lists["a_beats_b"] == []
    by_gap = sorted(bpb, key=lambda d: bpb[d][1] - bpb[d][0])  # most negative B − A first
    assert [h["id"] for h in lists["b_beats_a"]] == by_gap[: len(lists["b_beats_a"])]
    for key, model in (("hardest_a", 0), ("hardest_b", 1)):
        hardest = sorted(bpb, key=lambda d: -bpb[d][model])
        assert [h["id"] for h in lists[key]] == hardest[: len(lists[key])]
    for h in lists["b_beats_a"] + lists["hardest_a"]:
        assert (h["bits_per_byte_a"], h["bits_per_byte_b"]) == pytest.approx(bpb[h["id"]])
        assert len(h["snippet"]) <= 60 and h["snippet"] == " ".join(h["snippet"].split())


def test_without_attribution_every_other_figure_and_column_is_the_same(compared, tmp_path):
    result, table, argv = compared
    json_path, per_doc = tmp_path / "plain.json", tmp_path / "plain.parquet"
    argv = [*argv[: argv.index("--json")], "--json", str(json_path), "--per-doc", str(per_doc)]
    with pytest.raises(SystemExit) as info:
        run(main, [*argv, "--no-attribution"])
    assert info.value.code == 0
    plain = json.loads(json_path.read_text())
    assert plain["classes"] == plain["positions"] == {}
    assert plain == {**result, "classes": {}, "positions": {}}
    plain_table = pq.read_table(per_doc).to_pydict()
    assert plain_table == {k: v for k, v in table.items() if k in plain_table}
    assert set(table) - set(plain_table) == {
        f"{column}_{name}" for name in CLASSES for column in ("bytes", "nats_a", "nats_b")
    }
