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
tensors). What remains is raw tensor bytes and the JSON-serialised graph.

That graph is not inert either: torch's deserializer hands some of its strings to
code. :func:`load` validates each of these fields of ``models/model.json``, wherever
it appears (nested subgraphs included), before ``torch.export.load`` reads it, and
admits only what ``torch.export.save`` writes for a plain program:

- ``expr_str`` (symbolic sizes, strides and values): ``sympy.sympify`` evaluates it
  as Python with every builtin in scope. Admitted: sympy's printed form
  (``srepr``) of a shape expression, checked with :mod:`ast`: calls of the sympy
  classes and torch's sympy functions the reader knows, integer literals, symbol
  names, assumptions such as ``integer=True``.
- node ``target``, ``as_operator`` arguments and ``source_fn_stack`` metadata: looked
  up by qualified name (``getattr`` from ``torch``, ``operator``, ``math``, or an
  extension registry), and graph nodes call what they name. Admitted: the Python
  operators the export verifier allows, ``torch.sym_*``, a few control-flow and
  grad-mode higher-order operators, and ATen operators the dispatcher registers
  whose string arguments are mode switches (so not ``aten.from_file``, which maps a
  file into a tensor the graph can then write, nor TorchScript builtins such as
  ``aten.save``).
- ``guards_code``: Python source that ``ExportedProgram.module()`` compiles and
  runs. Admitted: none (torch writes an empty list for a plain program).
- ``in_spec`` and ``out_spec`` (pytree specs): their contexts may name a module to
  import (enums, ``defaultdict`` factories). Admitted: tuples, lists, dicts and
  leaves, with contexts of plain keys.
- ``verifiers``: looked up in torch's verifier registry. Admitted: ``ATEN``, ``TRAINING``.
- parameter, buffer and constant names, module paths, subgraph names: assigned as
  attributes along their dotted path. Admitted: dotted identifiers, no dunder.
- script objects (``custom_obj``): need a pickle and a registered class; refused.

A field that breaks a rule is a :class:`~bpbeval.errors.CheckpointError` naming the
archive entry and the field. Hugging Face weights load from safetensors only,
offline, with remote code only when asked.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import importlib
import io
import itertools
import json
import os
import re
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch
from torch import Tensor, nn

from bpbeval.errors import CheckpointError
from bpbeval.files import atomic_directory, atomic_write_bytes, atomic_write_text
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
_PAYLOAD_CONFIGS = {
    "data/weights/model_weights_config.json": re.compile(r"weight_\d+"),
    "data/constants/model_constants_config.json": re.compile(r"tensor_\d+"),
}
_PROGRAM_JSON = "models/model.json"
# What a Hugging Face model directory holds that transformers reads: weights (safetensors
# only), configs and tokenizer files (*.json, *.txt, *.model, *.tiktoken), remote code.
_HF_FILES = ("*.safetensors", "*.json", "*.txt", "*.model", "*.tiktoken", "*.py")
_PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"})

# What torch writes into the program, field by field (see the module docstring). Expressions
# are sympy.srepr output; the calls are the sympy classes it prints for shape expressions and
# the torch.utils._sympy.functions the reader puts in scope (GraphModuleDeserializer).
_SYMPY_CALLS = frozenset(
    {
        *("Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min"),
        *("Equality", "Unequality", "StrictLessThan", "LessThan", "StrictGreaterThan"),
        *("GreaterThan", "And", "Or", "Not"),
        *("FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt"),
        *("FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow"),
        *("FloatTrueDiv", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat"),
        *("TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "Identity"),
    }
)
_SYMPY_CONSTANTS = frozenset({"true", "false", "oo", "zoo", "nan"})
_SYMBOL_ASSUMPTIONS = frozenset({"integer", "positive", "nonnegative", "real"})  # ShapeEnv's
# srepr writes letters, digits, underscores, calls, quotes and keywords; anything else (a
# newline sympify would delete, a comment, an operator) is not a printed shape expression.
_EXPRESSION_CHARACTERS = re.compile(r"[A-Za-z0-9_(),.'= +-]*")
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|[-+]?inf|nan")
_IDENTIFIER = re.compile(r"(?!__)[A-Za-z_][A-Za-z0-9_]*")
_DOTTED = re.compile(r"(?!__)\w+(\.(?!__)\w+)*", re.ASCII)
# What a source_fn_stack entry names besides an operator: a torch function, a functional, an
# nn.Module class, or a method name (kept as a string). Torch resolves it with getattr from torch.
_SOURCE_FUNCTION = re.compile(
    r"torch\.(nn\.modules\.[a-z]\w*\.[A-Z]\w*|nn\.functional\.[a-z]\w*|_C\._nn\.[a-z]\w*|[a-z]\w*)"
    r"|[a-z]\w*",
    re.ASCII,
)
# Python callables a node may target, as torch's serializer names them: the export verifier's
# allowed builtins and the symbolic-int operators.
_PYTHON_TARGETS = frozenset(
    [
        *(f"_operator.{name}" for name in ("getitem", "add", "mul", "sub", "truediv", "ge")),
        *(f"_operator.{name}" for name in ("le", "gt", "lt", "eq", "ne", "floordiv", "mod")),
        *(f"_operator.{name}" for name in ("and_", "or_", "not_", "pow", "neg", "pos", "abs")),
        *(f"_operator.{name}" for name in ("lshift", "rshift")),
        *(f"math.{name}" for name in ("ceil", "floor", "trunc")),
        *(f"torch.sym_{name}" for name in ("int", "float", "ite", "max", "min", "not", "sqrt")),
        "torch.sym_sum",
    ]
)
# Higher-order operators that only run their own subgraphs (checked like the main graph).
_HIGHER_ORDER = frozenset(
    {"cond", "while_loop", "wrap_with_set_grad_enabled", "wrap_with_autocast"}
)
# The string arguments of ATen operators that choose a mode from a fixed set; an operator with
# any other string argument (a file name, text to print) is refused.
_MODE_ARGUMENTS = frozenset(
    {
        *("approximate", "rounding_mode", "reduce", "equation", "indexing", "interpolation"),
        *("mode", "norm", "ord", "p", "pad_mode", "padding", "padding_side", "side", "UPLO"),
        *("driver", "assert_msg", "activation", "algorithm"),
    }
)
_VERIFIERS = frozenset({"ATEN", "TRAINING"})
_TREESPEC_TYPES = frozenset({None, "builtins.tuple", "builtins.list", "builtins.dict"})
_NAME_FIELDS = frozenset(
    {"parameter_name", "buffer_name", "tensor_constant_name", "user_input_name", "fqn"}
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
    with _archive_errors(program_path):
        _check_archive(program_path)
        # Every entry: the graph, weights, constants and non-persistent buffers all decide the
        # logits, and a state dict holds only some of them. Reading them all checks their CRCs.
        identity = _digest(
            "native",
            itertools.chain(
                _archive_parts(program_path),
                [(META_FILE, [meta_bytes]), ("tokenizer", [tokenizer.hash.encode()])],
            ),
        )
    with _weights_only_loads():
        try:
            program = torch.export.load(program_path)
        except Exception as e:  # torch raises assorted types for a corrupt archive
            raise CheckpointError(f"cannot load {program_path}: {e}") from e
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


@contextlib.contextmanager
def _archive_errors(program_path: Path) -> Iterator[None]:
    """Turn what a corrupt or malformed archive raises while it is read into a CheckpointError."""
    try:
        yield
    except (
        *(zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RecursionError),
        *(KeyError, ValueError, TypeError, AttributeError),  # JSON of the wrong shape
    ) as e:
        raise CheckpointError(
            f"{program_path} is not a readable torch.export archive ({e!r})"
        ) from e


def _check_archive(program_path: Path) -> None:
    """Refuse a ``.pt2`` archive holding anything ``torch.export.load`` would unpickle or run."""
    with zipfile.ZipFile(program_path) as archive:
        root = _archive_root(program_path, archive)
        for name in archive.namelist():
            if not _ALLOWED_FILES.fullmatch(name[len(root) + 1 :]):
                raise CheckpointError(
                    f"{program_path} holds {name}, which bpbeval does not load; "
                    "re-save the checkpoint with bpbeval.checkpoint.save"
                )
        for config, payload_file in _PAYLOAD_CONFIGS.items():
            for fqn, payload in json.loads(archive.read(f"{root}/{config}"))["config"].items():
                if payload["use_pickle"] or not payload_file.fullmatch(payload["path_name"]):
                    raise CheckpointError(
                        f"{program_path} stores {fqn} as a pickled object, which bpbeval "
                        "refuses to load; export a model whose weights are plain tensors"
                    )
        entry = f"{root}/{_PROGRAM_JSON}"
        _check_program(json.loads(archive.read(entry)), f"{program_path}:{entry}")


def _archive_root(program_path: Path, archive: zipfile.ZipFile) -> str:
    """The one folder every entry lives in; torch reads the entries under the first one's."""
    names = archive.namelist()
    root = names[0].split("/", 1)[0] if names else ""
    # Python's zipfile and torch's reader could disagree on which of two same-named entries,
    # or on an entry outside the root, is the one that counts: admit neither.
    if len(set(names)) != len(names) or not all(n.startswith(root + "/") for n in names):
        raise CheckpointError(
            f"{program_path} has duplicate entries or entries outside {root}/; "
            "re-save the checkpoint with bpbeval.checkpoint.save"
        )
    return root


def _check_program(value: object, entry: str, path: str = "") -> None:
    """Walk the serialized program and refuse any field torch would evaluate, import or call.

    Example:
        >>> _check_program({"expr_str": "Symbol('s0', integer=True)"}, "model.json")
        >>> try:
        ...     _check_program({"a": [{"expr_str": "__import__('os')"}]}, "model.json")
        ... except CheckpointError as e:
        ...     print(str(e).split(", not")[0])
        model.json: field a[0].expr_str holds "__import__('os')", which calls __import__
    """
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_program(item, entry, f"{path}[{i}]")
        return
    if not isinstance(value, dict):
        return
    for key, item in value.items():
        field = f"{path}.{key}" if path else str(key)
        problem = _field_problem(key, item)
        if problem is not None:
            raise CheckpointError(
                f"{entry}: field {field} holds {_excerpt(item)}, which {problem}; bpbeval loads "
                "only what torch.export.save writes for a plain program: re-save the checkpoint "
                "with bpbeval.checkpoint.save"
            )
        _check_program(item, entry, field)


def _field_problem(key: str, value: object) -> str | None:
    """Why torch must not see ``value`` under ``key``, or ``None`` if it is what torch writes."""
    if key == "expr_str":
        return _expression_problem(value)
    if key in ("target", "as_operator"):  # only a node has a target
        return _target_problem(value)
    if key == "source_fn_stack":
        return _source_fn_problem(value)
    if key in ("in_spec", "out_spec"):
        return _treespec_problem(value)
    if key == "guards_code" and value != []:
        return "is Python source that ExportedProgram.module() would exec"
    if key == "verifiers" and (
        not isinstance(value, list) or not value or not set(value) <= _VERIFIERS
    ):
        return f"names verifiers other than {sorted(_VERIFIERS)}"
    if key in ("as_custom_obj", "custom_obj") or (key == "custom_obj_values" and value):
        return "is a script object, which needs a pickle and a registered class"
    if key == "treespec_namedtuple_fields" and value:
        return "names namedtuple types, which a plain program's inputs and outputs are not"
    if key == "range_constraints" and not (
        isinstance(value, dict) and all(_IDENTIFIER.fullmatch(str(k)) for k in value)
    ):
        return "names something other than symbols"
    if key in _NAME_FIELDS and not (isinstance(value, str) and _DOTTED.fullmatch(value or "_")):
        return "is not a dotted name of identifiers"
    if key == "as_graph" and not (
        isinstance(value, dict) and _IDENTIFIER.fullmatch(str(value.get("name")))
    ):
        return "names a subgraph with something other than an identifier"
    return None


def _expression_problem(text: object) -> str | None:
    """Why ``text`` is not a sympy expression as torch prints one (``srepr``), if it is not."""
    if not isinstance(text, str) or not _EXPRESSION_CHARACTERS.fullmatch(text):
        return "holds characters torch's sympy printer never writes"
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        return "is not a Python expression"
    return _sympy_problem(tree.body)


def _sympy_problem(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return None
    if isinstance(node, ast.Name) and node.id in _SYMPY_CONSTANTS:
        return None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return _sympy_problem(node.operand)
    if not isinstance(node, ast.Call):
        return f"uses {type(node).__name__}, which torch's sympy printer never writes"
    name = node.func.id if isinstance(node.func, ast.Name) else None
    if name not in _SYMPY_CALLS:
        return f"calls {ast.unparse(node.func)}, not one of the sympy functions torch writes"
    # Strings appear only as a symbol's name and a float's digits: sympy would parse a string
    # argument of any other function as one more expression.
    first = node.args[0] if node.args else None
    if name in ("Symbol", "Float"):
        pattern = _IDENTIFIER if name == "Symbol" else _NUMBER
        if not (
            len(node.args) == 1
            and isinstance(first, ast.Constant)
            and isinstance(first.value, str)
            and pattern.fullmatch(first.value)
        ):
            return f"gives {name} something other than a {'name' if name == 'Symbol' else 'number'}"
        allowed = _SYMBOL_ASSUMPTIONS if name == "Symbol" else {"precision"}
        for keyword in node.keywords:
            if keyword.arg not in allowed or not (
                isinstance(keyword.value, ast.Constant) and type(keyword.value.value) in (bool, int)
            ):
                return f"gives {name} the keyword {keyword.arg}, which torch never writes"
        return None
    if node.keywords:
        return f"gives {name} keywords, which torch never writes"
    return next(filter(None, map(_sympy_problem, node.args)), None)


def _target_problem(target: object) -> str | None:
    """Why a node must not call what ``target`` names, or ``None`` if torch.export writes it."""
    if not isinstance(target, str):
        return "is not an operator name"
    if target in _PYTHON_TARGETS:
        return None
    higher_order = re.fullmatch(r"torch\.ops\.higher_order\.(\w+)", target)
    if higher_order and higher_order[1] in _HIGHER_ORDER:
        return None
    aten = re.fullmatch(r"torch\.ops\.aten\.(\w+)\.(\w+)", target)
    if not aten:
        return (
            "is not an ATen operator, a control-flow operator or a Python operator torch.export "
            "writes"
        )
    name, overload = f"aten::{aten[1]}", "" if aten[2] == "default" else aten[2]
    if f"{name}.{overload}".rstrip(".") not in _dispatcher_operators():
        return "is not an operator the dispatcher registers (a TorchScript builtin, or none)"
    strings = [
        a.name for a in torch._C._get_schema(name, overload).arguments if "str" in str(a.type)
    ]
    if not set(strings) <= _MODE_ARGUMENTS:
        stranger = sorted(set(strings) - _MODE_ARGUMENTS)[0]
        return f"takes a string argument {stranger!r} that is not a mode"
    return None


@functools.cache
def _dispatcher_operators() -> frozenset[str]:
    return frozenset(torch._C._dispatch_get_all_op_names())


def _source_fn_problem(stack: object) -> str | None:
    """``source_fn_stack`` is ``name,target;...``; torch looks each target up by name."""
    if not isinstance(stack, str):
        return "is not a source function stack"
    for item in stack.split(";"):
        name, _, target = item.partition(",")
        if not _IDENTIFIER.fullmatch(name) or (
            _target_problem(target) is not None and not _SOURCE_FUNCTION.fullmatch(target)
        ):
            return "names something other than an operator, a torch function or a module class"
    return None


def _treespec_problem(text: object) -> str | None:
    """A pytree spec whose every node is a tuple, list, dict or leaf, with plain contexts."""
    try:
        protocol, spec = json.loads(text)  # type: ignore[arg-type]
        pending = [spec]
        while pending:
            node = pending.pop()
            context = node["context"]
            keys = None if context is None else json.loads(context)
            if node["type"] not in _TREESPEC_TYPES or not (
                keys is None or (isinstance(keys, list) and all(_plain_key(k) for k in keys))
            ):
                return "holds a pytree type or context other than tuple, list, dict and keys"
            pending.extend(node["children_spec"])
    except (TypeError, ValueError, KeyError):
        return "is not a pytree spec"
    return None if protocol == 1 else "is a pytree spec in a protocol torch.export does not write"


def _plain_key(key: object) -> bool:
    return isinstance(key, (str, int)) and not isinstance(key, bool)


def _excerpt(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


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
