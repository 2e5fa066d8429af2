"""Shared tiny fixtures: tokenizers, models, documents and checkpoints built in-process.

Everything is small enough to build in a second or two and is built once per session.
Text comes from what ships with Python (``pydoc_data.topics``).
"""

from __future__ import annotations

import contextlib
import json
import os
import pydoc_data.topics
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from bpbeval.data import Document
from bpbeval.gpt import GPT, GPTConfig
from bpbeval.tokenizer import SPECIAL_TOKENS, Tokenizer, train

CONTEXT = 16  # tokens a tiny model sees at once: documents need several windows
ROOT = Path(__file__).resolve().parents[1]


def torchrun(world: int, *args: str) -> list[str]:
    """The command that runs ``args`` (a script and its arguments, or ``-m module ...``) on
    ``world`` ranks of this machine."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={world}", *args,
    ]  # fmt: skip


def torchrun_env() -> dict[str, str]:
    """A rank's environment: bpbeval from this checkout, one torch thread (ranks share 2 cores)."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


# The suite shares 2 cores with other jobs; torch's intra-op threads then spin-wait on
# each other and tiny ops run 30x slower. Tiny models gain nothing from a second thread.
torch.set_num_threads(1)

# Non-ASCII text, so that bytes and characters differ.
UNICODE_TEXTS = ("héllo wörld — naïve café ✓", "日本語のテキスト 🙂 и кириллица", "")


def stdlib_texts(count: int, *, offset: int = 0) -> list[str]:
    """``count`` help topics of Python's documentation, a few hundred bytes to kilobytes each."""
    topics = sorted(pydoc_data.topics.topics.items())
    return [text for _, text in topics[offset : offset + count]]


@pytest.fixture(scope="session")
def byte_tokenizer() -> Tokenizer:
    """Byte-level: 256 byte tokens and the special tokens, no merges."""
    return train([], vocab_size=256 + len(SPECIAL_TOKENS))


@pytest.fixture(scope="session")
def bpe_tokenizer() -> Tokenizer:
    """A 320-id BPE trained on a little stdlib text."""
    return train(stdlib_texts(8), vocab_size=320)


def tiny_gpt(vocab_size: int, *, context_len: int = CONTEXT, seed: int = 0) -> GPT:
    """A one-layer GPT with random weights (its bpb is high, but exactly defined)."""
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size, context_len=context_len, n_layer=1, n_head=2, n_embd=32)
    return GPT(config).eval()


@pytest.fixture(scope="session")
def context_len() -> int:
    """The context of the tiny models: short, so that documents need several windows."""
    return CONTEXT


@pytest.fixture(scope="session")
def make_gpt() -> Callable[..., GPT]:
    """``make_gpt(vocab_size, *, context_len=16, seed=0)``: a tiny GPT (see :func:`tiny_gpt`)."""
    return tiny_gpt


@pytest.fixture(scope="session")
def documents() -> list[Document]:
    """Twelve documents: stdlib help topics cut to varied lengths, non-ASCII text, an empty one."""
    texts = [text[: 20 + 15 * i] for i, text in enumerate(stdlib_texts(9, offset=50))]
    texts += UNICODE_TEXTS
    return [
        Document(f"doc{i}", text, "unicode" if i >= 9 else "topics") for i, text in enumerate(texts)
    ]


@pytest.fixture(scope="session")
def native_checkpoint(tmp_path_factory: pytest.TempPathFactory, bpe_tokenizer: Tokenizer):
    """A native checkpoint directory of a tiny GPT and the BPE tokenizer; returns (path, model)."""
    from bpbeval.checkpoint import save

    model = tiny_gpt(bpe_tokenizer.vocab_size)
    path = tmp_path_factory.mktemp("native") / "ckpt"
    save(path, model, bpe_tokenizer, CONTEXT)
    return path, model


def byte_level_bpe(
    texts: list[str], *, vocab_size: int, normalizer=None, add_prefix_space: bool = False
):
    """A GPT-2-style byte-level BPE, a Hugging Face ``tokenizers.Tokenizer``, on ``texts``."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE())
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    """A Hugging Face directory: tiny GPT-2, byte-level BPE fast tokenizer; gives (path, model)."""
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    hf = byte_level_bpe(stdlib_texts(8), vocab_size=300)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=hf, eos_token="<|endoftext|>")
    torch.manual_seed(1)
    config = GPT2Config(
        vocab_size=hf.get_vocab_size(), n_positions=CONTEXT, n_embd=32, n_layer=1, n_head=2
    )
    model = GPT2LMHeadModel(config).eval()
    path = tmp_path_factory.mktemp("hf") / "gpt2"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, model


@pytest.fixture(scope="session")
def documents_jsonl(tmp_path_factory: pytest.TempPathFactory, documents: list[Document]):
    """The ``documents`` as one JSONL file with "text" and "domain" keys (ids ``docs.jsonl:N``)."""
    path = tmp_path_factory.mktemp("data") / "docs.jsonl"
    lines = (json.dumps({"text": d.text, "domain": d.domain}) for d in documents)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _can_write_in(directory: Path) -> bool:
    try:
        (directory / "probe").write_bytes(b"")
    except OSError:
        return False
    (directory / "probe").unlink()
    return True


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """An empty directory nothing can be written in, by mode or, for root, as immutable."""
    directory = tmp_path / "read_only"
    directory.mkdir()
    directory.chmod(0o555)
    immutable = False
    if _can_write_in(directory) and shutil.which("chattr"):  # root ignores modes, not this
        chattr = subprocess.run(["chattr", "+i", str(directory)], capture_output=True)
        immutable = chattr.returncode == 0
    try:
        if _can_write_in(directory):
            pytest.skip("cannot make a directory read-only here (root without chattr)")
        yield directory
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
        directory.chmod(0o755)


class Spawner:
    """``subprocess.Popen`` for processes that cannot outlive :meth:`close`.

    Each one starts a session of its own with a marker in its environment;
    ``close`` kills its session and every process still carrying its marker:
    ``torchrun`` starts each rank in a session of its own, and a rank whose
    launcher died would keep running otherwise.
    """

    def __init__(self) -> None:
        self.started: list[tuple[subprocess.Popen, bytes]] = []

    def __call__(self, argv: list[str], *, env: dict[str, str] | None = None, **kwargs):
        token = uuid.uuid4().hex
        env = {**(os.environ if env is None else env), "BPBEVAL_TEST_PROCESS": token}
        proc = subprocess.Popen(argv, env=env, start_new_session=True, **kwargs)
        self.started.append((proc, f"BPBEVAL_TEST_PROCESS={token}\0".encode()))
        return proc

    def close(self) -> None:
        for proc, marker in self.started:
            if proc.poll() is None:  # its pid still names its session: this kills nothing else
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
            for pid in _marked(marker):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait()
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()


@pytest.fixture
def spawn() -> Iterator[Spawner]:
    """A :class:`Spawner` closed on teardown, however the test ends (pass, assert, timeout)."""
    spawner = Spawner()
    try:
        yield spawner
    finally:
        spawner.close()


def _marked(marker: bytes) -> list[int]:
    """Processes whose environment holds ``marker`` (``NAME=value\\0``)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:
            continue  # not ours, or exited meanwhile
    return found
