"""Checkpoints that carry their tokenizer: native (``torch.export``), Hugging Face, custom.

A native checkpoint is a directory::

    checkpoint.json   format, version, context length, bos id, tokenizer hash
    model.pt2         torch.export program: int64 ids [B, T] -> logits [B, T, V],
                      B and T dynamic, 1 <= T <= context length
    tokenizer/        the bpbeval tokenizer (Tokenizer.save)

Loading it needs no model code, and unpickles nothing. In torch 2.13,
``torch.export.load`` itself unpickles: weights and constants stored as tensor
subclasses (``torch.load(weights_only=False)``), script and opaque objects
(``pickle.loads``), sample inputs (``weights_only=True`` first, then a fallback to
``weights_only=False``), legacy archives, and it loads AOTInductor libraries and
every ``models/*.json`` it finds. So :func:`load` first checks the archive: only
the files ``torch.export.save`` writes for one plain program may be there, and its
JSON payload configs must mark every weight and constant as raw bytes. Then it
runs ``torch.export.load`` with ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1``, which turns
every ``torch.load`` inside into a weights-only one (the sample inputs are plain
tensors). What remains is raw tensor bytes and the JSON-serialised graph. Hugging
Face weights load with ``weights_only=True``, offline, with remote code only when
asked.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import re
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from bpbeval.errors import CheckpointError
from bpbeval.files import atomic_directory, atomic_write_text
from bpbeval.tokenizer import TextTokenizer, Tokenizer

FORMAT = "bpbeval-native"
FORMAT_VERSION = 1
META_FILE = "checkpoint.json"
PROGRAM_FILE = "model.pt2"
TOKENIZER_DIR = "tokenizer"

# Every file model.pt2 may hold: the graph as JSON, raw tensor bytes described by JSON
# configs, and archive bookkeeping. Anything else (another model, AOTInductor libraries,
# legacy pickles) is refused before torch.export.load sees it.
_ALLOWED_FILES = re.compile(
    r"(models/model\.json|data/weights/(weight_\d+|model_weights_config\.json)"
    r"|data/constants/(tensor_\d+|model_constants_config\.json)|data/sample_inputs/model\.pt"
    r"|archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id)"
)
_PAYLOAD_CONFIGS = (
    "data/weights/model_weights_config.json",
    "data/constants/model_constants_config.json",
)


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
        program = torch.export.passes.move_to_device_pass(program, "cpu")
    with atomic_directory(directory, owns=(META_FILE, PROGRAM_FILE, TOKENIZER_DIR)) as tmp:
        torch.export.save(program, tmp / PROGRAM_FILE)
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
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
        if meta["format"] != FORMAT:
            raise CheckpointError(f"{path / META_FILE} is not a {FORMAT} checkpoint")
        if meta["version"] != FORMAT_VERSION:
            raise CheckpointError(
                f"{path} has checkpoint format version {meta['version']}; this bpbeval reads "
                f"version {FORMAT_VERSION}"
            )
        context_len, expected_hash = int(meta["context_len"]), str(meta["tokenizer_hash"])
    except (ValueError, KeyError, TypeError) as e:
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
    _check_archive(program_path)
    with _weights_only_loads():
        try:
            program = torch.export.load(program_path)
        except Exception as e:  # torch raises assorted types for a corrupt archive
            raise CheckpointError(f"cannot load {program_path}: {e}") from e
    if device.type != "cpu":
        program = torch.export.passes.move_to_device_pass(program, device)
    identity = _identity("native", program.graph_module.code, program.state_dict, tokenizer.hash)
    module = program.module()
    if dtype is not None:
        module = module.to(dtype)
    return Checkpoint(module, tokenizer, context_len, identity, "native", str(path))


def _check_archive(program_path: Path) -> None:
    """Refuse a ``.pt2`` archive holding anything ``torch.export.load`` would unpickle."""
    try:
        with zipfile.ZipFile(program_path) as archive:
            names = archive.namelist()
            root = names[0].split("/", 1)[0] if names else ""
            for name in names:
                inner = name[len(root) + 1 :] if name.startswith(root + "/") else name
                if not _ALLOWED_FILES.fullmatch(inner):
                    raise CheckpointError(
                        f"{program_path} holds {name}, which bpbeval does not load; "
                        "re-save the checkpoint with bpbeval.checkpoint.save"
                    )
            for config in _PAYLOAD_CONFIGS:
                for fqn, payload in json.loads(archive.read(f"{root}/{config}"))["config"].items():
                    if payload["use_pickle"] or not payload["path_name"].startswith(
                        ("weight_", "tensor_")
                    ):
                        raise CheckpointError(
                            f"{program_path} stores {fqn} as a pickled object, which bpbeval "
                            "refuses to load; export a model whose weights are plain tensors"
                        )
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError) as e:
        raise CheckpointError(
            f"{program_path} is not a readable torch.export archive ({e!r})"
        ) from e


@contextlib.contextmanager
def _weights_only_loads() -> Iterator[None]:
    """Make every ``torch.load`` in the body weights-only, whatever its caller asks."""
    key, old = "TORCH_FORCE_WEIGHTS_ONLY_LOAD", os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ[key] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ[key]
        else:
            os.environ[key] = old


def _load_huggingface(
    path: Path, device: torch.device, dtype: torch.dtype | None, trust_remote_code: bool
) -> Checkpoint:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bpbeval.tokenizer import from_huggingface

    options = {"local_files_only": True, "trust_remote_code": trust_remote_code}
    try:
        hf_tokenizer = AutoTokenizer.from_pretrained(path, **options)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, weights_only=True, **options
        )
    except (OSError, ValueError) as e:  # transformers' errors for missing/unknown files
        raise CheckpointError(f"cannot load Hugging Face model {path}: {e}") from e
    model = model.to(device).eval()
    context_len = _context_of(model)
    if context_len is None:
        raise CheckpointError(f"{path}/config.json gives no max_position_embeddings or n_positions")
    tokenizer = from_huggingface(hf_tokenizer)
    # With remote code the directory's own modules define the model: they are part of it.
    code = [f"{f.name}\0{f.read_text(encoding='utf-8')}" for f in sorted(path.glob("*.py"))]
    config = "\0".join([model.config.to_json_string(), *code])
    identity = _identity("huggingface", config, model.state_dict(), tokenizer.hash)

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
    state: dict[str, Tensor] = {}
    kind_code = f"{type(model).__module__}.{type(model).__qualname__}"
    if isinstance(model, nn.Module):
        model = model.to(device=device, dtype=dtype).eval()
        state = model.state_dict()
    else:  # a plain callable has no weights to hash: the loader and its argument name the model
        kind_code += f"\0{loader}\0{spec}"
    identity = _identity("custom", kind_code, state, tokenizer.hash)
    return Checkpoint(model, tokenizer, int(context_len), identity, "custom", spec)


def _context_of(model: object) -> int | None:
    """The context length a model's config declares, if it declares one."""
    config = getattr(model, "config", None)
    for name in ("context_len", "max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def _identity(kind: str, code: str, state: dict[str, Tensor], tokenizer_hash: str) -> str:
    """SHA-256 over the model's kind, code or config, every tensor's bytes, and the tokenizer."""
    h = hashlib.sha256()
    for part in (kind, code, tokenizer_hash):
        h.update(part.encode("utf-8") + b"\0")
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\0".encode())
        h.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters(), torch.empty(0)).device
