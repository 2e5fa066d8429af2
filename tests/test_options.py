"""Shared CLI options: one typed object, every default shown, one declaration of the cache key."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from bpbeval.compare import build_parser
from bpbeval.eval import ScoringOptions
from bpbeval.eval import main as eval_main
from bpbeval.scoring import DEFAULT_BATCH_TOKENS


def _optional_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.dest != "help"]


def test_every_option_of_compare_and_eval_shows_its_default(capsys):
    actions = _optional_actions(build_parser())
    assert {a.dest for a in actions} >= {f.name for f in fields(ScoringOptions)}
    for action in (a for a in actions if not a.required):  # --data has no default
        assert action.help is not None and "default" in action.help, action.dest
    with pytest.raises(SystemExit):
        eval_main(["--help"])
    text = " ".join(capsys.readouterr().out.split()).split("documents:", 1)[1]  # past usage
    for f in fields(ScoringOptions)[1:]:  # after --data
        flag = "--" + f.name.replace("_", "-")
        # A --flag/--no-flag pair shows both before its help.
        after = text.split(flag, 1)[1].removeprefix(f", --no-{flag[2:]}").split(" --", 1)[0]
        assert "(default" in after, (flag, after)
    # The defaults that --help showed as blank before: text column, batch budget, device.
    assert "(default: text)" in text and f"(default: {DEFAULT_BATCH_TOKENS})" in text
    assert "here cpu" in text or "here cuda" in text


def test_options_round_trip_and_the_cache_key_is_what_changes_a_score():
    parser = argparse.ArgumentParser()
    ScoringOptions.add_arguments(parser)
    argv = ["--data", "a", "b", "--stride", "3", "--batch-tokens", "64", "--dtype", "bfloat16"]
    options = ScoringOptions.from_args(parser.parse_args(argv))
    assert options.data == ["a", "b"] and options.batch_tokens == 64
    # The same keys as every earlier version, so existing caches stay valid.
    assert options.cache_settings() == {
        "stride": 3,
        "context": None,
        "dtype": "bfloat16",
        "allow_inexact_bytes": False,
    }
    # Batching and hardware never key the cache: they change no document's score.
    for speed in ("batch_tokens", "batch_size", "device"):
        assert speed not in options.cache_settings()
