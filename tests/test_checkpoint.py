"""Checkpoints: native round trip without model code, nothing unpickled, HF and custom loaders."""

from __future__ import annotations

import io
import json
import pathlib
import shutil
import zipfile

import pytest
import torch

from bpbeval.checkpoint import META_FILE, PROGRAM_FILE, load, save
from bpbeval.errors import CheckpointError


def test_native_round_trip_gives_the_model_s_logits_for_any_batch_and_length(
    native_checkpoint, bpe_tokenizer, context_len
):
    path, model = native_checkpoint
    checkpoint = load(str(path))
    assert (checkpoint.kind, checkpoint.context_len, checkpoint.source) == ("native", 16, str(path))
    assert checkpoint.tokenizer.hash == bpe_tokenizer.hash
    assert checkpoint.tokenizer.bos_id == bpe_tokenizer.bos_id
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for shape in [(1, 1), (3, 7), (2, context_len)]:
            ids = torch.randint(bpe_tokenizer.vocab_size, shape, generator=generator)
            torch.testing.assert_close(checkpoint.model(ids), model(ids), rtol=0, atol=1e-6)
    assert load(str(path)).identity == checkpoint.identity
    assert len(checkpoint.identity) == 64


def copy_checkpoint(source: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    target = tmp_path / "copy"
    shutil.copytree(source, target)
    return target


def rewrite_archive(path: pathlib.Path, change) -> None:
    """Rebuild the zip at ``path`` with ``change(name, data)`` -> [(name, data), ...] per entry."""
    with zipfile.ZipFile(path) as archive:
        entries = [(name, archive.read(name)) for name in archive.namelist()]
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries:
            for new_name, new_data in change(name, data):
                archive.writestr(new_name, new_data)


def test_a_replaced_tokenizer_is_a_hash_mismatch(native_checkpoint, tmp_path):
    path = copy_checkpoint(native_checkpoint[0], tmp_path)
    meta = json.loads((path / META_FILE).read_text())
    meta["tokenizer_hash"] = "0" * 64
    (path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="tokenizer hash mismatch"):
        load(str(path))


def test_archives_with_pickled_or_unknown_payloads_are_refused(native_checkpoint, tmp_path):
    path = copy_checkpoint(native_checkpoint[0], tmp_path)
    program = path / PROGRAM_FILE
    original = program.read_bytes()

    def pickled_weights(name, data):
        if name.endswith("model_weights_config.json"):
            config = json.loads(data)
            for payload in config["config"].values():
                payload["use_pickle"] = True
            data = json.dumps(config).encode()
        return [(name, data)]

    rewrite_archive(program, pickled_weights)
    with pytest.raises(CheckpointError, match="pickled object"):
        load(str(path))

    def compiled_library(name, data):
        library = name.replace("models/model.json", "data/aotinductor/model/model.so")
        return [(name, data)] + ([(library, b"\x7fELF")] if library != name else [])

    program.write_bytes(original)
    rewrite_archive(program, compiled_library)
    with pytest.raises(CheckpointError, match="does not load"):
        load(str(path))


class Touch:
    """Unpickling this creates a file: the proof that something was unpickled."""

    def __init__(self, target: pathlib.Path) -> None:
        self.target = target

    def __reduce__(self):
        return (pathlib.Path.touch, (self.target,))


def test_loading_never_unpickles_objects(native_checkpoint, tmp_path):
    path = copy_checkpoint(native_checkpoint[0], tmp_path)
    witness = tmp_path / "unpickled"
    buffer = io.BytesIO()
    torch.save((Touch(witness),), buffer)

    def evil_sample_inputs(name, data):
        return [(name, buffer.getvalue() if name.endswith("sample_inputs/model.pt") else data)]

    rewrite_archive(path / PROGRAM_FILE, evil_sample_inputs)
    with pytest.raises(CheckpointError, match="cannot load"):
        load(str(path))
    assert not witness.exists()


def test_missing_and_unknown_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load(str(tmp_path / "nowhere"))
    with pytest.raises(CheckpointError, match="neither a bpbeval checkpoint"):
        load(str(tmp_path))


def test_huggingface_directory_loads_offline_with_eos_as_prefix(hf_checkpoint, context_len):
    path, model = hf_checkpoint
    checkpoint = load(str(path))
    assert (checkpoint.kind, checkpoint.context_len) == ("huggingface", context_len)
    eos = checkpoint.tokenizer.tokenizer.token_to_id("<|endoftext|>")
    assert checkpoint.tokenizer.bos_id == eos
    ids = torch.randint(
        checkpoint.tokenizer.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        torch.testing.assert_close(checkpoint.model(ids), model(ids).logits, rtol=0, atol=1e-6)
    assert load(str(path)).identity == checkpoint.identity


REMOTE_CODE = """
from pathlib import Path
Path(__file__).with_name("ran").write_text("imported")  # the mark of code that ran
from transformers import GPT2Config, GPT2LMHeadModel

class RemoteConfig(GPT2Config):
    model_type = "remote_gpt2"

class RemoteModel(GPT2LMHeadModel):
    config_class = RemoteConfig
"""


def test_huggingface_remote_code_runs_only_on_request_and_is_part_of_the_identity(
    hf_checkpoint, tmp_path
):
    path, _ = hf_checkpoint
    remote = tmp_path / "remote"
    shutil.copytree(path, remote)
    (remote / "remote_gpt2.py").write_text(REMOTE_CODE)
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "remote_gpt2.RemoteConfig",
        "AutoModelForCausalLM": "remote_gpt2.RemoteModel",
    }
    config["model_type"] = "remote_gpt2"
    (remote / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="trust_remote_code"):
        load(str(remote))
    assert not (remote / "ran").exists()
    # A Python file beside the weights changes the identity, as a changed program would.
    extra = tmp_path / "extra"
    shutil.copytree(path, extra)
    (extra / "remote_gpt2.py").write_text(REMOTE_CODE)
    assert load(str(extra)).identity != load(str(path)).identity
    assert not (extra / "ran").exists()


LOADER = """
from bpbeval.gpt import GPT, GPTConfig
from bpbeval.tokenizer import train

def load_tiny(spec):
    import torch
    torch.manual_seed(int(spec))
    return GPT(GPTConfig(265, context_len=12, n_layer=1, n_embd=16)), train([], vocab_size=265)

def load_function(spec):
    model, tokenizer = load_tiny(spec)
    return (lambda ids: model(ids)), tokenizer, 12
"""


def test_custom_loader(tmp_path, monkeypatch):
    (tmp_path / "tiny_loader.py").write_text(LOADER)
    monkeypatch.syspath_prepend(str(tmp_path))
    checkpoint = load("3", loader="tiny_loader:load_tiny")
    assert (checkpoint.kind, checkpoint.context_len, checkpoint.source) == ("custom", 12, "3")
    assert checkpoint.model(torch.zeros(1, 4, dtype=torch.long)).shape == (1, 4, 265)
    assert load("3", loader="tiny_loader:load_tiny").identity == checkpoint.identity
    assert load("4", loader="tiny_loader:load_tiny").identity != checkpoint.identity
    # A plain function hides its weights: other arguments must not share its identity (nor cache).
    function = load("3", loader="tiny_loader:load_function")
    assert function.model(torch.ones(1, 4, dtype=torch.long)).shape == (1, 4, 265)
    assert load("3", loader="tiny_loader:load_function").identity == function.identity
    assert load("4", loader="tiny_loader:load_function").identity != function.identity
    with pytest.raises(CheckpointError, match="cannot import loader"):
        load("3", loader="tiny_loader:missing")


def test_save_refuses_to_replace_a_directory_of_other_files(tmp_path, bpe_tokenizer, make_gpt):
    # The atomic swap replaces the directory whole: pointed at data, it must refuse, not delete.
    data = tmp_path / "data"
    data.mkdir()
    (data / "corpus.txt").write_text("precious")
    model = make_gpt(bpe_tokenizer.vocab_size)
    with pytest.raises(FileExistsError, match=r"holds 'corpus\.txt'"):
        save(data, model, bpe_tokenizer, 16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temporary left over
    assert (data / "corpus.txt").read_text() == "precious"
    save(tmp_path / "ckpt", model, bpe_tokenizer, 16)
    other = make_gpt(bpe_tokenizer.vocab_size, seed=1)
    save(tmp_path / "ckpt", other, bpe_tokenizer, 16)  # a checkpoint replaces a checkpoint
    ids = torch.arange(10).view(1, 10) % bpe_tokenizer.vocab_size
    with torch.no_grad():
        torch.testing.assert_close(load(tmp_path / "ckpt").model(ids), other(ids))
