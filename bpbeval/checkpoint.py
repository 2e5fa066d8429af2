"""Checkpoints that carry their tokenizer: native (``torch.export``), Hugging Face, custom.

A native checkpoint is a directory::

    checkpoint.json   format, version, context length, bos id, tokenizer hash
    model.pt2         torch.export program: int64 ids [B, T] -> logits [B, T, V],
                      B and T dynamic, 1 <= T <= context length
    tokenizer/        the bpbeval tokenizer (Tokenizer.save)

Loading it needs no model code and unpickles nothing, and no field of the program
runs code: :mod:`bpbeval.export_archive` checks the archive before torch reads it.
Hugging Face weights load from safetensors only, offline, with remote code only
when asked.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import itertools
import json
import os
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch
from torch import Tensor, nn

from bpbeval.errors import CheckpointError
from bpbeval.export_archive import archive_errors, check_archive, load_program
from bpbeval.files import atomic_directory, atomic_write_bytes, atomic_write_text
from bpbeval.tokenizer import TextTokenizer, Tokenizer

FORMAT = "bpbeval-native"
FORMAT_VERSION = 1
META_FILE = "checkpoint.json"
PROGRAM_FILE = "model.pt2"
TOKENIZER_DIR = "tokenizer"

# What a Hugging Face model directory holds that transformers reads: weights (safetensors
# only), configs and tokenizer files (*.json, *.txt, *.model, *.tiktoken), remote code.
_HF_FILES = ("*.safetensors", "*.json", "*.txt", "*.model", "*.tiktoken", "*.py")
_PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"})


@dataclass(frozen=True)
class Checkpoint:
    """A model ready to score, with the tokenizer it was trained with.

    Attributes:
        model: int64 ids [B, T] -> logits [B, T, V]; scoring calls it under
            ``torch.inference_mode``.
        tokenizer: encodes documents and gives each token's UTF-8 byte length.
        context_len: the most tokens the model sees at once.
        identity: hex digest of what determines the scores (weights, program, tokenizer).
        kind: ``"native"``, ``"huggingface"`` or ``"custom"``.
        source: the path or loader spec it came from.
    """

    model: Callable[[Tensor], Tensor]
    tokenizer: TextTokenizer
    context_len: int
    identity: str
    kind: str
    source: str


def save(
    directory: str | os.PathLike[str], model: nn.Module, tokenizer: Tokenizer, context_len: int
) -> None:
    """Export ``model`` and write it with ``tokenizer`` as a native checkpoint, atomically.

    Args:
        directory: created or replaced as a whole, only once everything is written.
        model: maps int64 ids [B, T] to logits [B, T, V] for any T up to ``context_len``.
        tokenizer: the bpbeval tokenizer the model was trained with.
        context_len: the most tokens the model takes at once, at least 2.

    Example:
        >>> import tempfile
        >>> from bpbeval.gpt import GPT, GPTConfig
        >>> from bpbeval.tokenizer import train
        >>> tok = train(["hello world"], vocab_size=265)
        >>> d = tempfile.mkdtemp() + "/ckpt"
        >>> save(d, GPT(GPTConfig(vocab_size=265, context_len=8, n_embd=16)), tok, 8)
        >>> ckpt = load(d)
        >>> ckpt.kind, ckpt.context_len, ckpt.model(torch.zeros(1, 3, dtype=torch.long)).shape
        ('native', 8, torch.Size([1, 3, 265]))
    """
    if context_len < 2:
        raise CheckpointError(
            f"context_len must be at least 2 (the prefix and a token), got {context_len}"
        )
    model = model.eval()
    example = torch.zeros(2, context_len, dtype=torch.long, device=_device_of(model))
    batch, time = torch.export.Dim("B", min=1), torch.export.Dim("T", min=1, max=context_len)
    with torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch, 1: time},))
    if example.device.type != "cpu":  # saved on the CPU, so that any machine can load it
        program = _move(program, torch.device("cpu"))
    # torch's zip writer aborts the interpreter when a write fails (it throws from a C++
    # destructor): write the archive in memory, then to disk as any other file.
    archive = io.BytesIO()
    torch.export.save(program, archive)
    with atomic_directory(directory, owns=(META_FILE, PROGRAM_FILE, TOKENIZER_DIR)) as tmp:
        atomic_write_bytes(tmp / PROGRAM_FILE, archive.getbuffer())
        tokenizer.save(tmp / TOKENIZER_DIR)
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "context_len": context_len,
            "bos_id": tokenizer.bos_id,
            "tokenizer_hash": tokenizer.hash,
        }
        atomic_write_text(tmp / META_FILE, json.dumps(meta, indent=2) + "\n")


def load(
    spec: str,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    loader: str | None = None,
    trust_remote_code: bool = False,
) -> Checkpoint:
    """Load a native checkpoint, a Hugging Face model directory, or call a custom loader.

    Args:
        spec: a checkpoint directory, or the argument passed to ``loader``.
        device: where the model runs.
        dtype: cast floating-point weights to this dtype; ``None`` keeps them.
        loader: ``"package.module:function"``; ``function(spec)`` returns
            ``(model, tokenizer)`` or ``(model, tokenizer, context_len)``.
        trust_remote_code: let a Hugging Face directory run its own model code.

    Raises:
        CheckpointError: missing, unknown, corrupt or inconsistent checkpoint.
    """
    device = torch.device(device)
    if loader is not None:
        return _load_custom(spec, loader, device, dtype)
    path = Path(spec)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {spec} does not exist or is not a directory")
    if (path / META_FILE).is_file():
        return _load_native(path, device, dtype)
    if (path / "config.json").is_file():
        return _load_huggingface(path, device, dtype, trust_remote_code)
    raise CheckpointError(
        f"{spec} is neither a bpbeval checkpoint (no {META_FILE}) nor a Hugging Face model "
        "directory (no config.json); for other formats pass --loader package.module:function"
    )


def _load_native(path: Path, device: torch.device, dtype: torch.dtype | None) -> Checkpoint:
    meta_bytes = (path / META_FILE).read_bytes()
    try:
        meta = json.loads(meta_bytes.decode("utf-8"))
        if meta["format"] != FORMAT:
            raise CheckpointError(f"{path / META_FILE} is not a {FORMAT} checkpoint")
        if meta["version"] != FORMAT_VERSION:
            raise CheckpointError(
                f"{path} has checkpoint format version {meta['version']}; this bpbeval reads "
                f"version {FORMAT_VERSION}"
            )
        context_len, expected_hash = int(meta["context_len"]), str(meta["tokenizer_hash"])
    except (ValueError, KeyError, TypeError) as e:  # UnicodeDecodeError is a ValueError
        raise CheckpointError(
            f"{path / META_FILE} is malformed ({e!r}); re-save the checkpoint"
        ) from e
    tokenizer = Tokenizer.load(path / TOKENIZER_DIR)
    if tokenizer.hash != expected_hash:
        raise CheckpointError(
            f"tokenizer hash mismatch in {path}: {TOKENIZER_DIR}/ hashes to {tokenizer.hash} but "
            f"{META_FILE} expects {expected_hash}; the tokenizer was replaced: re-save the "
            "checkpoint"
        )
    program_path = path / PROGRAM_FILE
    with archive_errors(program_path):
        check_archive(program_path)
        # Every entry: the graph, weights, constants and non-persistent buffers all decide the
        # logits, and a state dict holds only some of them. Reading them all checks their CRCs.
        identity = _digest(
            "native",
            itertools.chain(
                _archive_parts(program_path),
                [(META_FILE, [meta_bytes]), ("tokenizer", [tokenizer.hash.encode()])],
            ),
        )
    program = load_program(program_path)
    _check_context(program, context_len, path)
    if device.type != "cpu":
        program = _move(program, device)
    module = program.module()
    if dtype is not None:
        module = module.to(dtype)
    return Checkpoint(module, tokenizer, context_len, identity, "native", str(path))


def _move(program: torch.export.ExportedProgram, device: torch.device):
    from torch.export.passes import move_to_device_pass  # not imported by torch.export

    return move_to_device_pass(program, device)


def _check_context(program: torch.export.ExportedProgram, context_len: int, path: Path) -> None:
    """Refuse a program that does not take one ids tensor [B, T] for every T up to the context."""
    inputs = program.graph_signature.user_inputs
    placeholders = program.graph.find_nodes(op="placeholder")
    ids = next((n.meta.get("val") for n in placeholders if tuple(inputs) == (n.name,)), None)
    if getattr(ids, "ndim", None) != 2:
        raise CheckpointError(
            f"{path / PROGRAM_FILE} does not take one ids tensor [B, T]; re-save the checkpoint "
            "with bpbeval.checkpoint.save"
        )
    length = ids.shape[1]
    if isinstance(length, int):
        low, high = length, length
    else:  # a symbol with a range, or (not written by save) an expression: no range, refused
        expr = length.node.expr
        bounds = program.range_constraints.get(expr)
        low, high = (bounds.lower, bounds.upper) if bounds is not None else (expr, expr)
    if not (low == 1 and context_len <= high):
        raise CheckpointError(
            f"{path / META_FILE} gives context_len {context_len}, but {PROGRAM_FILE} takes only "
            f"{low} to {high} tokens at once; bpbeval scores windows of 1 to context_len tokens: "
            "re-save the checkpoint with bpbeval.checkpoint.save"
        )


def _load_huggingface(
    path: Path, device: torch.device, dtype: torch.dtype | None, trust_remote_code: bool
) -> Checkpoint:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bpbeval.tokenizer import from_huggingface

    if not any(path.glob("*.safetensors")):
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
        found = f"only {pickles[0]}, a pickle," if pickles else "no weights"
        raise CheckpointError(
            f"{path} holds {found} and no *.safetensors file; bpbeval loads Hugging Face "
            "weights from safetensors only (a pickle can run code): convert them with "
            "model.save_pretrained(directory, safe_serialization=True)"
        )
    options = {"local_files_only": True, "trust_remote_code": trust_remote_code}
    try:
        hf_tokenizer = AutoTokenizer.from_pretrained(path, **options)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, use_safetensors=True, weights_only=True, **options
        )
    except (OSError, ValueError) as e:  # transformers' errors for missing/unknown files
        raise CheckpointError(f"cannot load Hugging Face model {path}: {e}") from e
    model = model.to(device).eval()
    context_len = _context_of(model)
    if context_len is None:
        raise CheckpointError(f"{path}/config.json gives no max_position_embeddings or n_positions")
    tokenizer = from_huggingface(hf_tokenizer)
    # The files transformers reads: weights, configs, tokenizer files and, with remote code,
    # the modules that define the model.
    files = sorted({f for pattern in _HF_FILES for f in path.glob(pattern) if f.is_file()})
    identity = _digest("huggingface", _file_parts(files, path))

    def logits(ids: Tensor) -> Tensor:
        return model(input_ids=ids, use_cache=False).logits

    return Checkpoint(logits, tokenizer, context_len, identity, "huggingface", str(path))


def _load_custom(
    spec: str, loader: str, device: torch.device, dtype: torch.dtype | None
) -> Checkpoint:
    module_name, _, function_name = loader.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError, ValueError) as e:
        raise CheckpointError(
            f"cannot import loader {loader!r} ({e}); give it as package.module:function"
        ) from e
    loaded = function(spec)
    if not isinstance(loaded, tuple) or len(loaded) not in (2, 3):
        raise CheckpointError(
            f"loader {loader} must return (model, tokenizer) or (model, tokenizer, context_len)"
        )
    model, tokenizer = loaded[:2]
    context_len = loaded[2] if len(loaded) == 3 else _context_of(model)
    if context_len is None:
        raise CheckpointError(
            f"cannot tell the context length of the model from {loader}; "
            "return (model, tokenizer, context_len)"
        )
    parts: list[tuple[str, Iterable[bytes]]] = [
        ("class", [f"{type(model).__module__}.{type(model).__qualname__}".encode()]),
        ("tokenizer", [tokenizer.hash.encode()]),
    ]
    if isinstance(model, nn.Module):
        model = model.to(device=device, dtype=dtype).eval()
        parts += _tensor_parts(model)
    else:  # a plain callable has no weights to hash: the loader and its argument name the model
        parts += [("loader", [loader.encode()]), ("spec", [spec.encode()])]
    identity = _digest("custom", parts)
    return Checkpoint(model, tokenizer, int(context_len), identity, "custom", spec)


def _context_of(model: object) -> int | None:
    """The context length a model's config declares, if it declares one."""
    config = getattr(model, "config", None)
    for name in ("context_len", "max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def _digest(kind: str, parts: Iterable[tuple[str, Iterable[bytes]]]) -> str:
    """SHA-256 over the kind and each named part, a part being the SHA-256 of its chunks.

    Example:
        >>> _digest("x", [("a", [b"1", b"2"])]) == _digest("x", [("a", [b"12"])])
        True
        >>> _digest("x", [("a", [b"12"])]) == _digest("x", [("a1", [b"2"])])
        False
    """
    h = hashlib.sha256(kind.encode("utf-8") + b"\0")
    for name, chunks in parts:
        part = hashlib.sha256()
        for chunk in chunks:
            part.update(chunk)
        h.update(name.encode("utf-8") + b"\0" + part.digest())
    return h.hexdigest()


def _archive_parts(program_path: Path) -> Iterator[tuple[str, Iterator[bytes]]]:
    """Every entry of the archive, by name, in name order."""
    with zipfile.ZipFile(program_path) as archive:
        for name in sorted(archive.namelist()):
            yield f"{PROGRAM_FILE}/{name}", _chunks(archive.open(name))


def _file_parts(files: Iterable[Path], directory: Path) -> Iterator[tuple[str, Iterator[bytes]]]:
    for file in files:
        yield file.relative_to(directory).as_posix(), _chunks(file.open("rb"))


def _chunks(stream: BinaryIO) -> Iterator[bytes]:
    with stream:
        while chunk := stream.read(1 << 20):
            yield chunk


def _tensor_parts(module: nn.Module) -> Iterator[tuple[str, list[bytes]]]:
    """Every parameter and buffer, persistent or not: all the state a module computes with."""
    for kind, named in (
        ("parameter", module.named_parameters(remove_duplicate=False)),
        ("buffer", module.named_buffers(remove_duplicate=False)),
    ):
        for name, tensor in sorted(named, key=lambda item: item[0]):
            tensor = tensor.detach().to("cpu").contiguous()
            header = f"{tensor.dtype}:{tuple(tensor.shape)}".encode()
            yield f"{kind}:{name}", [header, tensor.view(-1).view(torch.uint8).numpy().tobytes()]


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters(), torch.empty(0)).device
