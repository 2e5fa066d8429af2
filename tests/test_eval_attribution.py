"""eval reports one model's bpb by character class and by context position."""

from __future__ import annotations

import json
import math

import pytest

from bpbeval.attribution import CLASSES, POSITIONS, character_class
from bpbeval.cli import run
from bpbeval.eval import main


def test_eval_breaks_its_bpb_down_by_class_and_position(
    native_checkpoint, documents_jsonl, documents, tmp_path, capsys
):
    out = tmp_path / "eval.json"
    argv = [str(native_checkpoint[0]), "--data", str(documents_jsonl), "--device", "cpu",
            "--json", str(out)]  # fmt: skip
    with pytest.raises(SystemExit) as info:
        run(main, argv)
    stdout, err = capsys.readouterr()
    assert info.value.code == 0, err
    result = json.loads(out.read_text())

    # Bytes per class, counted here character by character from the texts themselves.
    expected = dict.fromkeys(CLASSES, 0)
    for document in documents:
        for char in document.text:
            expected[character_class(char)] += len(char.encode("utf-8"))
    classes, positions = result["classes"], result["positions"]
    assert {k: v["bytes"] for k, v in classes.items()} == {k: n for k, n in expected.items() if n}
    assert list(positions) == [p for p in POSITIONS if p in positions]
    total_nats = result["bits_per_byte"] * math.log(2) * result["bytes"]
    for parts in (classes, positions):
        assert sum(p["bytes"] for p in parts.values()) == result["bytes"]
        assert math.fsum(p["nats"] for p in parts.values()) == pytest.approx(total_nats, rel=1e-9)
        for p in parts.values():
            assert p["bits_per_byte"] == pytest.approx(p["nats"] / (math.log(2) * p["bytes"]))
            assert p["share"] == p["bytes"] / result["bytes"]

    # The terminal: classes with at least 1% of the bytes, every position bucket.
    lines = stdout.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("by class")))
    shown = [line.split()[0] for line in lines[start + 1 :] if line.strip()]
    big = [k for k, v in classes.items() if v["share"] >= 0.01]
    assert shown[: len(big)] == big
    assert shown[len(big) + 1 :] == list(positions)  # after the "by position" header
