"""Checkpoints: native round trip without model code, nothing unpickled, HF and custom loaders."""

from __future__ import annotations

import errno
import io
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import zipfile

import pytest
import sympy
import torch

from bpbeval.checkpoint import META_FILE, PROGRAM_FILE, load, save
from bpbeval.cli import run
from bpbeval.errors import CheckpointError
from bpbeval.eval import main as eval_main
from bpbeval.export_archive import _check_program


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


# The mark goes to an absolute path: transformers runs a copy of the module from its modules
# cache, so a mark beside ``__file__`` would not appear even if the code ran.
REMOTE_CODE = """
from pathlib import Path
Path({marker!r}).write_text("imported")  # the mark of code that ran
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
    remote, marker = tmp_path / "remote", tmp_path / "ran"
    code = REMOTE_CODE.format(marker=str(marker))
    shutil.copytree(path, remote)
    (remote / "remote_gpt2.py").write_text(code)
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "remote_gpt2.RemoteConfig",
        "AutoModelForCausalLM": "remote_gpt2.RemoteModel",
    }
    config["model_type"] = "remote_gpt2"
    (remote / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="trust_remote_code"):
        load(str(remote))
    assert not marker.exists()
    # A Python file beside the weights changes the identity, as a changed program would.
    extra = tmp_path / "extra"
    shutil.copytree(path, extra)
    (extra / "remote_gpt2.py").write_text(code)
    assert load(str(extra)).identity != load(str(path)).identity
    assert not marker.exists()


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


# Hostile programs: every field of models/model.json that torch's deserializer evaluates,
# imports from, looks up by name or executes, each carrying code that leaves a mark.


def rewrite_program(path: pathlib.Path, change) -> None:
    """Apply ``change(program)`` to the JSON program inside the checkpoint's ``model.pt2``."""

    def edit(name, data):
        if name.endswith("models/model.json"):
            program = json.loads(data)
            change(program)
            data = json.dumps(program).encode()
        return [(name, data)]

    rewrite_archive(path / PROGRAM_FILE, edit)


def python(code: str) -> str:
    """A Python expression running ``code`` under sympify, in characters srepr also writes.

    sympify evaluates with the builtin functions in scope and turns numbers into Integers,
    which ``chr`` accepts.
    """
    return f"exec({'+'.join(f'chr({ord(c)})' for c in code)})"


def touch(path: pathlib.Path) -> str:
    return f"import pathlib; pathlib.Path({str(path)!r}).touch()"


def sym_size(program) -> dict:
    return program["graph_module"]["graph"]["sym_int_values"]


def symbolic_value(program, tmp_path):
    next(iter(sym_size(program).values()))["as_expr"]["expr_str"] = python(touch(tmp_path / "ran"))


def string_inside_a_size(program, tmp_path):
    # sympy parses a string argument of Max as one more expression, with builtins in scope.
    metas = program["graph_module"]["graph"]["tensor_values"].values()
    size = next(s for m in metas for s in m["sizes"] if "as_expr" in s)
    size["as_expr"]["expr_str"] = f"Max(Integer(1), '{python(touch(tmp_path / 'ran'))}')"


def guards_code(program, tmp_path):
    program["guards_code"] = [f"{python(touch(tmp_path / 'ran'))} is None"]


def operator_from_file(program, tmp_path):
    # aten.from_file(shared=True) maps a file into a tensor; fill_ then writes into the file.
    graph = program["graph_module"]["graph"]
    meta = next(iter(graph["tensor_values"].values()))
    graph["tensor_values"]["mapped"] = {**meta, "dtype": 1, "requires_grad": False}
    graph["tensor_values"]["mapped"]["sizes"] = [{"as_int": 4}]
    graph["tensor_values"]["mapped"]["strides"] = [{"as_int": 1}]
    graph["tensor_values"]["filled"] = graph["tensor_values"]["mapped"]
    arguments = [
        ("filename", {"as_string": str(tmp_path / "victim")}),
        ("shared", {"as_bool": True}),
        ("size", {"as_int": 4}),
    ]
    graph["nodes"][:0] = [
        {
            "target": "torch.ops.aten.from_file.default",
            "inputs": [{"name": n, "arg": a, "kind": 1} for n, a in arguments],
            "outputs": [{"as_tensor": {"name": "mapped"}}],
            "metadata": {},
            "name": "mapped",
        },
        {
            "target": "torch.ops.aten.fill_.Scalar",
            "inputs": [
                {"name": "self", "arg": {"as_tensor": {"name": "mapped"}}, "kind": 1},
                {"name": "value", "arg": {"as_int": 88}, "kind": 1},
            ],
            "outputs": [{"as_tensor": {"name": "filled"}}],
            "metadata": {},
            "name": "filled",
        },
    ]


def operator_argument(program, tmp_path):
    node = program["graph_module"]["graph"]["nodes"][0]
    operator = {"as_operator": "torch.serialization.os.system"}
    node["inputs"].append({"name": "command", "arg": operator, "kind": 2})


def source_function(program, tmp_path):
    program["graph_module"]["graph"]["nodes"][0]["metadata"]["source_fn_stack"] = (
        "system,torch.serialization.os.system"
    )


def kwargs_spec(program, spec: dict) -> None:
    """Make ``spec`` the pytree spec of the program's keyword arguments."""
    signature = program["graph_module"]["module_call_graph"][0]["signature"]
    protocol, in_spec = json.loads(signature["in_spec"])
    in_spec["children_spec"][1] = {**spec, "children_spec": []}
    signature["in_spec"] = json.dumps([protocol, in_spec])


def importing_module(tmp_path) -> str:
    """A module on sys.path that marks its import (the test prepends ``tmp_path``)."""
    name = f"hostile_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(touch(tmp_path / "ran") + "\ndef f(): pass\nE = None\n")
    return name


def pytree_enum(program, tmp_path):
    key = {"__enum__": True, "fqn": f"{importing_module(tmp_path)}:E", "name": "A"}
    kwargs_spec(program, {"type": "builtins.dict", "context": json.dumps([key])})


def pytree_defaultdict(program, tmp_path):
    factory = {
        "default_factory_module": importing_module(tmp_path),
        "default_factory_name": "f",
        "dict_context": [],
    }
    kwargs_spec(program, {"type": "collections.defaultdict", "context": factory})


def verifier(program, tmp_path):
    program["verifiers"] = []


def parameter_name(program, tmp_path):
    spec = program["graph_module"]["signature"]["input_specs"][0]
    spec["parameter"]["parameter_name"] = "__class__"


HOSTILE_FIELDS = {
    symbolic_value: "sym_int_values",
    string_inside_a_size: "tensor_values",
    guards_code: "guards_code",
    operator_from_file: "target",
    operator_argument: "as_operator",
    source_function: "source_fn_stack",
    pytree_enum: "in_spec",
    pytree_defaultdict: "in_spec",
    verifier: "verifiers",
    parameter_name: "parameter_name",
}


@pytest.fixture
def hostile_checkpoint(native_checkpoint, tmp_path, monkeypatch):
    """``make(change)``: a copy of the native checkpoint whose program ``change`` rewrote."""
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "victim").write_bytes(b"safe")

    def make(change):
        path = copy_checkpoint(native_checkpoint[0], tmp_path)
        rewrite_program(path, lambda program: change(program, tmp_path))
        return path

    yield make
    assert not (tmp_path / "ran").exists(), "the checkpoint ran code"
    assert (tmp_path / "victim").read_bytes() == b"safe", "the checkpoint wrote a file"


@pytest.mark.parametrize("change", HOSTILE_FIELDS, ids=lambda change: change.__name__)
def test_a_program_field_torch_would_evaluate_is_refused_in_one_line(
    change, hostile_checkpoint, documents_jsonl, capsys
):
    path = hostile_checkpoint(change)
    with pytest.raises(CheckpointError, match=rf"model\.json: field \S*{HOSTILE_FIELDS[change]}"):
        load(str(path))
    with pytest.raises(SystemExit) as exit_info:
        run(eval_main, [str(path), "--data", str(documents_jsonl), "--device", "cpu"])
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert HOSTILE_FIELDS[change] in stderr


def test_the_eval_command_refuses_a_hostile_program_without_running_it(
    hostile_checkpoint, documents_jsonl, spawn
):
    path = hostile_checkpoint(symbolic_value)
    argv = [sys.executable, "-m", "bpbeval.eval", str(path), "--data", str(documents_jsonl)]
    proc = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1 and stdout == ""
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert "expr_str" in stderr and "exec" in stderr


def test_an_archive_with_two_programs_of_one_name_is_refused(native_checkpoint, tmp_path):
    path = copy_checkpoint(native_checkpoint[0], tmp_path)
    program = path / PROGRAM_FILE

    def second_program(name, data):
        return [(name, data)] * (2 if name.endswith("models/model.json") else 1)

    with pytest.warns(UserWarning, match="Duplicate name"):
        rewrite_archive(program, second_program)
    with pytest.raises(CheckpointError, match="duplicate entries"):
        load(str(path))


def shape_expressions() -> list:
    """Expressions of the kinds torch's shape environment builds, in sympy and torch functions."""
    from torch.utils._sympy import functions as f

    s0 = sympy.Symbol("s0", positive=True, integer=True)
    s1 = sympy.Symbol("s1", nonnegative=True, integer=True)
    u0 = sympy.Symbol("u0", integer=True)
    z = sympy.Symbol("zf0", real=True)
    size = s0  # after eight convolutions of kernel 3 and stride 2
    for _ in range(8):
        size = f.FloorDiv(size - 3, 2) + 1
    return [
        size,
        4 * sympy.Max(1, size) * sympy.Max(1, size.subs(s0, s1)),  # a stride
        s0**-1 * s1,
        (s0 + 1) ** 2,
        f.PowByNatural(s0, 3),
        f.FloatPow(f.ToFloat(s0), -0.5),
        f.LShift(s0, 3),
        f.RShift(s0, 2),
        sympy.Min(s0, 2**63 - 1),
        s0 - 2**63,
        s0,
        2 * s0 * s1 + 1,
        -s0 + 3,
        sympy.Rational(1, 2) * s0,
        s0**2,
        sympy.Max(s0, 2),
        sympy.Min(s1, u0),
        f.FloorDiv(s0, 4),
        f.Mod(s0, 3),
        f.PythonMod(u0, 5),
        f.CeilDiv(s0, 8),
        f.ModularIndexing(s0, 1, 4),
        f.CeilToInt(f.FloatTrueDiv(f.ToFloat(s0), 2.5)),
        f.TruncToInt(z),
        f.IntTrueDiv(s0, s1),
        sympy.Eq(s0, 4),
        sympy.Ne(s1, 0),
        sympy.And(sympy.Lt(s0, 5), sympy.Ge(s1, 2), sympy.Not(sympy.Le(u0, 0))),
        sympy.Or(sympy.Gt(s0, 1), sympy.true),
        f.Where(sympy.Lt(s0, 3), s0, 3),
        sympy.oo,
        -sympy.oo,
    ]


@pytest.mark.parametrize("expression", shape_expressions(), ids=str)
def test_every_shape_expression_torch_writes_is_admitted(expression):
    from torch.utils._sympy import functions

    written = sympy.srepr(expression)  # what torch's serializer writes (_print_sympy)
    _check_program({"expr_str": written}, "model.json")
    # Read back as torch's reader does: sympify, with torch's functions in scope.
    scope = {
        name: value
        for name, value in vars(functions).items()
        if isinstance(value, type) and issubclass(value, sympy.Basic) and name not in ("Max", "Min")
    }
    assert sympy.sympify(written, locals=scope) == expression


@pytest.mark.parametrize(
    "text",
    [
        "Symbol('s0').__class__",
        "Integer(1) + Integer(2)",
        "(lambda: Integer(1))()",
        "[Integer(i) for i in (1, 2)][0]",
        "Symbol('s0', integer=True)[0]",
        "__builtins__",
        "Symbol('__class__')",
        "Symbol('s0', evaluate=False)",
        "Max(Integer(1), 's0')",
        "Function('f')(Symbol('s0'))",
        "Integer(1)\nInteger(2)",
        "Integer(1) # comment",
        "Float('1.5', precision=53, flags=1)",
        "Symbol(chr(115))",
    ],
)
def test_anything_else_in_an_expression_is_refused(text):
    with pytest.raises(CheckpointError, match="expr_str"):
        _check_program({"expr_str": text}, "model.json")


# Costly programs: expressions in srepr's grammar that sympy, or torch's reader, would evaluate
# for ever (or for minutes, or until memory runs out).


def symbol(i: int) -> str:
    return sympy.srepr(sympy.Symbol(f"s{i}", positive=True, integer=True))


def binomials(constant: int) -> str:
    """(s0 + c)...(s15 + c)(s0 + c + 2)...(s7 + c + 2): 2**24 terms multiplied out."""
    factors = (f"Add({symbol(i % 16)}, Integer({constant + 2 * (i // 16)}))" for i in range(24))
    return f"Mul({', '.join(factors)})"


def sum_of_symbols(prefix: str) -> str:
    return "Add(" + ", ".join(f"Symbol('{prefix}{i}')" for i in range(120)) + ")"


# name: (expr_str, the reason the refusal gives). Admitted, the first ones would make torch's
# reader crash (minus signs), take minutes (deep: 20 s; sympy's gcd of two products of 16
# binomials: 51 s, doubling with each binomial; of two sums of 64 symbols: 115 s) or never
# return; the others each break one rule alone.
COSTLY_EXPRESSIONS = {
    "power": ("Pow(Integer(10), Integer(1000000000000000000))", "exponent"),
    "power of powers": ("Pow(" * 4 + "Integer(9223372036854775807)" + ", Integer(64))" * 4, "bits"),
    "float precision": ("Float('1.5', precision=1000000000)", "precision"),
    "gcd of products": (f"PythonMod({binomials(1)}, {binomials(2)})", "terms"),
    "gcd of sums": (f"PythonMod({sum_of_symbols('a')}, {sum_of_symbols('b')})", "symbols"),
    "deep": ("FloorDiv(Add(" * 90 + symbol(0) + ", Integer(-3)), Integer(2))" * 90, "deep"),
    "minus signs": ("-" * 4000 + "Integer(1)", "not a Python expression"),
    "shift": (f"LShift({symbol(0)}, Integer(1000000000000000000))", "exponent"),
    "symbolic exponent": (f"PowByNatural(Integer(2), {symbol(0)})", "exponent"),
    "float beyond a double": ("Integer(Float('1e100000000000', precision=53))", "number"),
    "integer": (f"Mul({symbol(0)}, Integer({2**64}))", "int64"),
    "long": (f"Add({', '.join(['Integer(1)'] * 400)})", "longer"),
    "Max": (f"Max({', '.join(symbol(i) for i in range(5))})", "arguments"),
}
FATAL = list(COSTLY_EXPRESSIONS)[:7]
LOAD_EACH = """
import json, sys
from bpbeval.checkpoint import load
from bpbeval.errors import CheckpointError
for path in sys.argv[1:]:
    try:
        load(path)
        print(json.dumps(None), flush=True)
    except CheckpointError as e:
        print(json.dumps(str(e)), flush=True)
"""


@pytest.mark.parametrize("name", COSTLY_EXPRESSIONS)
def test_an_expression_sympy_would_compute_for_long_is_refused(name):
    text, reason = COSTLY_EXPRESSIONS[name]
    with pytest.raises(CheckpointError, match=rf"field expr_str holds .*, which .*{reason}"):
        _check_program({"expr_str": text}, "model.json")


def test_loading_a_program_that_would_never_finish_is_refused_at_once(
    native_checkpoint, tmp_path, documents_jsonl, spawn, capsys
):
    paths = []
    for name in FATAL:
        path = tmp_path / name.replace(" ", "_")
        shutil.copytree(native_checkpoint[0], path)

        def change(program, text=COSTLY_EXPRESSIONS[name][0]):
            next(iter(sym_size(program).values()))["as_expr"]["expr_str"] = text

        rewrite_program(path, change)
        paths.append(str(path))
    # In a process of its own: were one admitted, torch's reader would not return.
    proc = spawn([sys.executable, "-c", LOAD_EACH, *paths], stdout=subprocess.PIPE, text=True)
    stdout, _ = proc.communicate(timeout=120)
    for name, message in zip(FATAL, map(json.loads, stdout.splitlines()), strict=True):
        reason = COSTLY_EXPRESSIONS[name][1]
        assert message is not None, f"{name} loaded"
        assert re.search(rf"model\.json: field \S*sym_int_values\S*expr_str .*{reason}", message)
    with pytest.raises(SystemExit) as exit_info:  # refused before torch reads it, so in-process
        run(eval_main, [paths[0], "--data", str(documents_jsonl), "--device", "cpu"])
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert "expr_str" in stderr and "exponent" in stderr


# Identities cover everything a model computes with.


class ScaledLM(torch.nn.Module):
    """A tiny LM whose logits depend on a non-persistent buffer, as a rotary table's do."""

    def __init__(self, vocab_size: int, scale: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(vocab_size, 8)
        self.head = torch.nn.Linear(8, vocab_size)
        self.register_buffer("scale", torch.full((8,), scale), persistent=False)
        self.config = type("Config", (), {"context_len": 16})()

    def forward(self, ids):
        hidden = (self.embed(ids) * self.scale).flatten(0, 1)  # sizes B*T: a product of symbols
        return self.head(hidden).view(*ids.shape, -1)


def test_native_identity_covers_non_persistent_buffers(bpe_tokenizer, tmp_path):
    ids = torch.arange(12).view(2, 6)
    loaded = []
    for scale in (1.0, 2.0):
        model = ScaledLM(bpe_tokenizer.vocab_size, scale).eval()
        save(tmp_path / str(scale), model, bpe_tokenizer, 16)
        loaded.append(load(str(tmp_path / str(scale))))
        with torch.no_grad():
            torch.testing.assert_close(loaded[-1].model(ids), model(ids))
    with torch.no_grad():
        assert not torch.equal(loaded[0].model(ids), loaded[1].model(ids))
    assert loaded[0].identity != loaded[1].identity


def test_huggingface_identity_covers_every_tokenizer_file(hf_checkpoint, tmp_path):
    path, _ = hf_checkpoint
    changed = tmp_path / "changed"
    shutil.copytree(path, changed)
    config = json.loads((changed / "tokenizer_config.json").read_text())
    config["model_max_length"] = 7
    (changed / "tokenizer_config.json").write_text(json.dumps(config))
    assert load(str(changed)).identity != load(str(path)).identity


BUFFER_LOADER = """
import torch
from bpbeval.tokenizer import train

class Scaled(torch.nn.Module):
    def __init__(self, scale):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(265, 4)
        self.register_buffer("scale", torch.tensor(scale), persistent=False)

    def forward(self, ids):
        return self.embed(ids) * self.scale

def load(spec):
    return Scaled(float(spec)), train([], vocab_size=265), 8
"""


def test_custom_identity_covers_non_persistent_buffers(tmp_path, monkeypatch):
    (tmp_path / "buffer_loader.py").write_text(BUFFER_LOADER)
    monkeypatch.syspath_prepend(str(tmp_path))
    one, two = (load(scale, loader="buffer_loader:load") for scale in ("1.0", "2.0"))
    assert one.model.state_dict().keys() == two.model.state_dict().keys() == {"embed.weight"}
    assert one.identity != two.identity
    assert load("1.0", loader="buffer_loader:load").identity == one.identity


# Devices.


def test_a_native_checkpoint_moves_to_another_device(native_checkpoint, bpe_tokenizer):
    # The meta device runs on any machine and takes the path every non-CPU device takes.
    checkpoint = load(str(native_checkpoint[0]), device="meta")
    logits = checkpoint.model(torch.zeros(2, 5, dtype=torch.long, device="meta"))
    assert (logits.device.type, logits.shape) == ("meta", (2, 5, bpe_tokenizer.vocab_size))
    assert checkpoint.identity == load(str(native_checkpoint[0])).identity


# One line where a traceback was.


def test_a_context_longer_than_the_program_takes_is_refused_at_load(native_checkpoint, tmp_path):
    path = copy_checkpoint(native_checkpoint[0], tmp_path)
    meta = json.loads((path / META_FILE).read_text())
    meta["context_len"] = 2 * meta["context_len"]
    (path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"context_len 32, but model\.pt2 takes only 1 to 16"):
        load(str(path))


def test_huggingface_weights_in_a_pickle_are_refused(
    hf_checkpoint, tmp_path, documents_jsonl, capsys
):
    path, model = hf_checkpoint
    pickled = tmp_path / "pickled"
    shutil.copytree(path, pickled, ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")  # the legacy weights file
    with pytest.raises(CheckpointError, match=r"only pytorch_model\.bin, a pickle.*safetensors"):
        load(str(pickled))
    with pytest.raises(SystemExit) as exit_info:
        run(eval_main, [str(pickled), "--data", str(documents_jsonl), "--device", "cpu"])
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 1 and stderr.count("\n") == 1 and "safetensors" in stderr


FULL_DISK = """
import resource, signal, sys
import torch
from bpbeval.checkpoint import save
from bpbeval.gpt import GPT, GPTConfig
from bpbeval.tokenizer import Tokenizer

tokenizer = Tokenizer.load(sys.argv[1] + "/tokenizer")
torch.manual_seed(1)
model = GPT(GPTConfig(tokenizer.vocab_size, context_len=16, n_layer=1, n_head=2, n_embd=32))
# Files may grow to 16 kB, the tokenizer's but not the program's: a disk full mid-save.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))
try:
    save(sys.argv[1], model, tokenizer, 16)
except OSError as e:
    print(type(e).__name__, e.errno)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE semantics")
def test_save_on_a_full_disk_raises_and_keeps_the_old_checkpoint(native_checkpoint, tmp_path):
    path = copy_checkpoint(native_checkpoint[0], tmp_path)
    before = {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()}
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(path)], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]  # was 134: torch's writer aborted
    assert proc.stdout.split() == ["OSError", str(errno.EFBIG)]
    assert [p.name for p in tmp_path.iterdir()] == ["copy"]  # no temporary left behind
    after = {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()}
    assert after == before
