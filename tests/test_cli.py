"""What every command line shares: one line for a Rust panic, a usage error for a bad device."""

from __future__ import annotations

import pytest
import rustbpe
import torch

from bpbeval.cli import run
from bpbeval.eval import main as eval_main


def panicking_main(argv):
    rustbpe.Tokenizer().train_from_iterator(iter(["text"]), 10)  # rustbpe asserts >= 256


def test_a_rust_panic_is_one_line_and_exit_status_1(capsys):
    with pytest.raises(BaseException) as raised:
        panicking_main(None)
    assert not isinstance(raised.value, Exception)  # what lets a panic pass `except Exception`
    with pytest.raises(SystemExit) as exit_info:
        run(panicking_main, [])
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert str(raised.value) in stderr


def test_other_base_exceptions_pass_through():
    def exiting_main(argv):
        raise SystemExit(3)

    with pytest.raises(SystemExit) as exit_info:
        run(exiting_main, [])
    assert exit_info.value.code == 3


def device_usage_error(device: str, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        eval_main(["ckpt", "--data", "docs.jsonl", "--device", device])
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert stderr.count("\n") == 1, stderr
    return stderr


def test_a_device_torch_does_not_know_is_a_usage_error(capsys):
    assert "'banana' is not a torch device" in device_usage_error("banana", capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_this_machine_lacks_is_a_usage_error(capsys):
    assert "this machine has no cuda device" in device_usage_error("cuda", capsys)


def test_a_device_index_past_the_last_is_a_usage_error(capsys):
    index = torch.cuda.device_count()
    if index == 0:
        pytest.skip("needs a CUDA device")
    assert f"there is no cuda:{index}" in device_usage_error(f"cuda:{index}", capsys)
