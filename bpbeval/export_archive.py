"""A ``torch.export`` archive (``model.pt2``) from an untrusted hand, checked before torch reads it.

In torch 2.13, ``torch.export.load`` itself unpickles: weights and constants stored
as tensor subclasses (``torch.load(weights_only=False)``), script and opaque objects
(``pickle.loads``), sample inputs (``weights_only=True`` first, then a fallback to
``weights_only=False``), legacy archives, and it loads AOTInductor libraries and
every ``models/*.json`` it finds. So :func:`check_archive` admits only the files
``torch.export.save`` writes for one plain program, and its JSON payload configs
must mark every weight and constant as raw bytes. Then :func:`load_program` runs
``torch.export.load`` with ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1``, which turns
every ``torch.load`` inside into a weights-only one (the sample inputs are plain
tensors). What remains is raw tensor bytes and the JSON-serialised graph.

That graph is not inert either: torch's deserializer hands some of its strings to
code. :func:`check_archive` validates each of these fields of ``models/model.json``, wherever
it appears (nested subgraphs included), before ``torch.export.load`` reads it, and
admits only what ``torch.export.save`` writes for a plain program:

- ``expr_str`` (symbolic sizes, strides and values): ``sympy.sympify`` evaluates it
  as Python with every builtin in scope. Admitted: sympy's printed form
  (``srepr``) of a shape expression, checked with :mod:`ast`: calls of the sympy
  classes and torch's sympy functions the reader knows, integer literals, symbol
  names, assumptions such as ``integer=True``. sympy also computes with it eagerly,
  so what it may make sympy and torch's reader compute is bounded: its length, call
  depth and distinct symbols, its integers (int64) and floats (doubles), its powers
  and shifts (literal exponents up to 64), the bits of any number it evaluates to,
  the terms it multiplies out to, and the arguments of ``Max`` and ``Min``.
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
archive entry and the field.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import json
import math
import os
import re
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import torch

from bpbeval.errors import CheckpointError

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
# torch's symbolic floats are doubles, which sympy prints with at most 17 significant digits
# and a 3-digit exponent, at 53 bits of precision. mpmath keeps any exponent and precision:
# Integer(Float('1e100000000000')) asks for a 40 GB integer, precision=10**9 never returns.
_NUMBER = re.compile(r"[-+]?(\d{1,20}\.?\d{0,20}|\.\d{1,20})([eE][-+]?\d{1,3})?|[-+]?inf|nan")
_FLOAT_PRECISION = 53
# What an admitted expression may make sympy compute. sympy evaluates numbers eagerly
# (10**(10**18) written as two literals never returns), multiplies polynomials out for their
# gcd (FloorDiv, Mod, PythonMod) and compares every pair of a Max's arguments; torch's reader
# also sympifies every sub-expression again (one expression 121 calls deep took it 2 s, 181
# deep 18 s). Each bound sits far above what torch writes: a GPT's expressions are at most
# 61 characters, 2 calls deep, 1 term, 1 symbol; an 8-layer CNN's with five dynamic
# dimensions 569 characters, 12 deep, 2 terms, 5 symbols.
_MAX_EXPRESSION_LENGTH = 4096
_MAX_DEPTH = 32  # calls inside calls, Integer(...) and Symbol(...) included
# Sizes, strides and their bounds are int64; an unbounded range is written as null, not a number.
_MAX_INTEGER = 2**63
# Exponents and shift counts are literals (a symbolic one is unbounded) up to 64: an int64 size
# to a higher power, or shifted further, overflows unless it is 0 or 1.
_MAX_EXPONENT = 64
_POWERS = frozenset({"Pow", "PowByNatural", "FloatPow"})
_SHIFTS = frozenset({"LShift", "RShift"})
# Powers of powers still grow (64**3 bits from three nested literals): an upper bound on the
# bits of any number the expression evaluates to, counting each symbol as 64 (an int64 size)
# and each float as 1024 (a double's range), stays below this. Without powers, no expression
# within the length bound reaches it.
_MAX_BITS = 2**15
# Terms once multiplied out: a product of n binomials has 2**n (torch's reader took 4 s over
# PythonMod of two products of 12, 51 s of 16). A stride multiplies a few sizes of few terms.
_MAX_TERMS = 128
# Distinct symbols: each is a variable of those polynomials (PythonMod of two sums of 32 symbols
# took sympy 9 s, of 64 two minutes). A program's symbols are its dynamic dimensions, and one
# size relates a few of them.
_MAX_SYMBOLS = 16
# torch's reader evaluates Max and Min with sympy's own, which compares every pair of arguments
# through assumptions queries (32 symbols take 0.5 s, 160 take 12 s). sym_max and sym_min are
# binary; sympy merges Max(Max(a, b), c) into one Max, dropping the arguments it can order.
_MAX_LATTICE_ARGUMENTS = 4
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


@contextlib.contextmanager
def archive_errors(program_path: Path) -> Iterator[None]:
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


def check_archive(program_path: Path) -> None:
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
    """Why ``text`` is not a sympy expression as torch prints one (``srepr``), if it is not.

    Example:
        >>> _expression_problem("Mul(Integer(32), Symbol('s0', positive=True, integer=True))")
        >>> _expression_problem("Pow(Integer(10), Integer(1000000000000000000))")
        'gives Pow an exponent that is not a number of at most 64'
        >>> _expression_problem("Pow(Pow(Pow(Integer(2), Integer(64)), Integer(64)), Integer(64))")
        'evaluates to a number of more than 32768 bits'
    """
    if not isinstance(text, str) or not _EXPRESSION_CHARACTERS.fullmatch(text):
        return "holds characters torch's sympy printer never writes"
    if len(text) > _MAX_EXPRESSION_LENGTH:
        return f"is longer than {_MAX_EXPRESSION_LENGTH} characters"
    try:
        tree = ast.parse(text, mode="eval")
    # Too deep for Python's parser: RecursionError, or MemoryError when its stack overflows.
    except (SyntaxError, RecursionError, MemoryError):
        return "is not a Python expression"
    problem = _sympy_problem(tree.body, depth=1)
    if problem is not None:
        return problem
    if _bits(tree.body) > _MAX_BITS:
        return f"evaluates to a number of more than {_MAX_BITS} bits"
    calls = [n for n in ast.walk(tree.body) if isinstance(n, ast.Call)]
    if max(map(_terms, calls), default=1) > _MAX_TERMS:
        return f"multiplies out to more than {_MAX_TERMS} terms"
    if len({n.args[0].value for n in calls if n.func.id == "Symbol"}) > _MAX_SYMBOLS:
        return f"holds more than {_MAX_SYMBOLS} symbols"
    return None


def _sympy_problem(node: ast.expr, *, depth: int) -> str | None:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return None if abs(node.value) <= _MAX_INTEGER else "holds an integer outside int64"
    if isinstance(node, ast.Name) and node.id in _SYMPY_CONSTANTS:
        return None
    # srepr writes a minus only before a literal: Integer(-5), -oo.
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, ast.USub)
        and isinstance(node.operand, (ast.Constant, ast.Name))
    ):
        return _sympy_problem(node.operand, depth=depth)
    if not isinstance(node, ast.Call):
        return f"uses {type(node).__name__}, which torch's sympy printer never writes"
    name = node.func.id if isinstance(node.func, ast.Name) else None
    if name not in _SYMPY_CALLS:
        return f"calls {name or 'an attribute'}, not one of the sympy functions torch writes"
    if depth > _MAX_DEPTH:
        return f"nests calls more than {_MAX_DEPTH} deep"
    # Strings appear only as a symbol's name and a float's digits: sympy would parse a string
    # argument of any other function as one more expression.
    first = node.args[0] if node.args else None
    if name in ("Symbol", "Float"):
        if not (
            len(node.args) == 1
            and isinstance(first, ast.Constant)
            and isinstance(first.value, str)
            and (_IDENTIFIER.fullmatch if name == "Symbol" else _is_double)(first.value)
        ):
            return f"gives {name} something other than a {'name' if name == 'Symbol' else 'number'}"
        for keyword in node.keywords:
            value = keyword.value.value if isinstance(keyword.value, ast.Constant) else None
            if not (
                (name == "Symbol" and keyword.arg in _SYMBOL_ASSUMPTIONS and type(value) is bool)
                or (name == "Float" and keyword.arg == "precision" and value == _FLOAT_PRECISION)
            ):
                return f"gives {name} the keyword {keyword.arg}={value!r}, which torch never writes"
        return None
    if node.keywords:
        return f"gives {name} keywords, which torch never writes"
    if name in ("Max", "Min") and len(node.args) > _MAX_LATTICE_ARGUMENTS:
        return f"gives {name} more than {_MAX_LATTICE_ARGUMENTS} arguments"
    problem = next(filter(None, (_sympy_problem(a, depth=depth + 1) for a in node.args)), None)
    if problem is None and (name in _POWERS or name in _SHIFTS):
        exponent = _exponent(node.args[1]) if len(node.args) == 2 else None
        if exponent is None or not abs(exponent) <= _MAX_EXPONENT:  # nan too
            return f"gives {name} an exponent that is not a number of at most {_MAX_EXPONENT}"
    return problem


def _is_double(text: str) -> bool:
    """Whether ``text`` is a float as sympy prints a double (not one beyond a double's range)."""
    return bool(_NUMBER.fullmatch(text)) and (
        math.isfinite(float(text)) or text.lstrip("+-") in ("inf", "nan")
    )


def _exponent(node: ast.expr) -> float | None:
    """The value of an exponent written as a literal (``Integer(2)``, ``-1``, ``Float('0.5')``).

    ``None`` for anything else; ``node`` is admitted by :func:`_sympy_problem`.
    """
    if isinstance(node, ast.UnaryOp):
        value = _exponent(node.operand)
        return None if value is None else -value
    if isinstance(node, ast.Constant):
        return node.value if type(node.value) is int else None
    if isinstance(node, ast.Call) and node.func.id in ("Integer", "Float") and len(node.args) == 1:
        argument = node.args[0]
        return float(argument.value) if node.func.id == "Float" else _exponent(argument)
    return None


def _power(node: ast.Call) -> int:
    """The exponent of an admitted power or shift, rounded up to a whole number."""
    return math.ceil(abs(_exponent(node.args[1])))


def _bits(node: ast.expr) -> int:
    """At most how many bits a number computed from the admitted expression ``node`` has."""
    if isinstance(node, ast.Constant):
        return node.value.bit_length()
    if isinstance(node, ast.Name):
        return 1
    if isinstance(node, ast.UnaryOp):
        return _bits(node.operand)
    name = node.func.id
    if name in ("Symbol", "Float"):
        return 64 if name == "Symbol" else 1024
    bits = [_bits(a) for a in node.args]
    if name in _POWERS:
        return bits[0] * max(1, _power(node))
    if name == "LShift":
        return bits[0] + _power(node)
    return sum(bits)  # any other function's value is bounded by its arguments' product


def _terms(node: ast.expr) -> int:
    """At most how many terms the admitted ``node`` has multiplied out, capped past the bound.

    Any function other than a sum, product or power is one term, as sympy treats it.
    """
    if not isinstance(node, ast.Call):
        return 1
    terms = [_terms(a) for a in node.args]
    if node.func.id == "Add":
        count = sum(terms)
    elif node.func.id == "Mul":
        count = math.prod(terms)
    elif node.func.id in _POWERS:  # the monomials of degree n in terms[0] variables
        power = max(1, _power(node))
        count = math.comb(terms[0] + power - 1, power)
    else:
        count = 1
    return min(count, _MAX_TERMS + 1)


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


def load_program(program_path: Path) -> torch.export.ExportedProgram:
    """``torch.export.load`` of a checked archive, with every ``torch.load`` inside weights-only."""
    with _weights_only_loads():
        try:
            return torch.export.load(program_path)
        except Exception as e:  # torch raises assorted types for a corrupt archive
            raise CheckpointError(f"cannot load {program_path}: {e}") from e
