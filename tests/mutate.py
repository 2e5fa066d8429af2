"""``make mutate``: mutation testing of the modules that carry bpbeval's invariants.

Each target runs mutmut on a copy of the checkout (so ``mutants/`` never lands in it
and a run can go on while the tree changes), scoped to some functions of one module,
against the fast tests that guard them, one test process at a time at the lowest
priority. It prints the score per target and lists every survivor; ``mutmut show
NAME`` in the printed directory shows one. Figures and the survivors judged
equivalent are in TESTING.md.

    python tests/mutate.py                 # every target
    python tests/mutate.py statistics      # some of them
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]


class Target(NamedTuple):
    module: str  # the file mutated
    functions: tuple[str, ...]  # mutmut's names of the functions mutated ("*": all of them)
    tests: tuple[str, ...]  # the test files run against each mutant
    deselect: str = ""  # a pytest -k expression of tests that cannot run under mutmut


TARGETS = {
    "functional": Target(
        "bpbeval/functional.py",
        ("*",),
        ("tests/test_functional.py", "tests/test_functional_contract.py", "tests/test_metric.py"),
        # torch.compile breaks its graph on mutmut's trampolines, with or without a mutant.
        deselect="not compile",
    ),
    "scoring": Target(
        "bpbeval/scoring.py",
        # The windows, and the sums: per-window nats reduced to each document's (_Reducer),
        # and the metric's totals checked against the documents' (_check_metric).
        (
            "x_rolling_windows",
            "x_padded_length",
            "xǁ_Reducerǁadd",
            "xǁ_Reducerǁflush",
            "x__check_metric",
        ),
        (
            "tests/test_windows.py",
            "tests/test_scoring_contract.py",
            "tests/test_bruteforce.py",
            "tests/test_scoring.py",
            "tests/test_scoring_attribution.py",  # per-token nats, which the reduce places too
        ),
    ),
    "statistics": Target(
        "bpbeval/statistics.py",
        ("*",),
        ("tests/test_statistics_contract.py", "tests/test_statistics.py"),
    ),
    "token_bytes": Target(
        "bpbeval/tokenizer/core.py",
        ("xǁTokenizerǁ_lengths", "xǁTokenizerǁtoken_bytes"),
        (
            "tests/test_tokenizer.py",
            "tests/test_tokenizer_adapters.py",
            "tests/test_tokenizer_contract.py",
        ),
    ),
    "audit": Target(
        "bpbeval/tokenizer/audit.py",
        ("*",),
        (
            "tests/test_audit_contract.py",
            "tests/test_tokenizer.py",
            "tests/test_tokenizer_adapters.py",
        ),
    ),
    "identity": Target(
        "bpbeval/checkpoint.py",
        # The identity: a SHA-256 over the kind and named parts, each hashed in chunks.
        ("x__digest", "x__archive_parts", "x__file_parts", "x__chunks"),
        ("tests/test_checkpoint.py", "tests/test_cache.py"),
    ),
}


def setup_cfg(target: Target) -> str:
    args = ["-p", "no:logging", "-p", "no:cacheprovider", "-x", "-q"]
    if target.deselect:
        args += ["-k", target.deselect]
    lines = [
        "[mutmut]",
        "source_paths=bpbeval",
        f"only_mutate={target.module}",
        # Workers fork from a server that never ran a test: a process that ran torch
        # forks children that can deadlock on its thread pools.
        "process_isolation=forkserver",
        # A mutant that loops forever (a window that never advances) is stopped at 5x the
        # time its tests take, not the default 15x.
        "timeout_multiplier=5",
        "pytest_add_cli_args_test_selection=",
        *(f"    {test}" for test in target.tests),
        "pytest_add_cli_args=",
        *(f"    {arg}" for arg in args),
    ]
    return "\n".join(lines) + "\n"


def run(name: str, target: Target, workdir: Path) -> tuple[int, int, list[str]]:
    """Mutate one target in a copy of the checkout; (killed or timed out, total, survivors)."""
    copy = workdir / name
    shutil.rmtree(copy, ignore_errors=True)
    copy.mkdir(parents=True)
    for part in ("bpbeval", "tests", "pyproject.toml"):
        source = ROOT / part
        if source.is_dir():
            shutil.copytree(source, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, copy / part)
    (copy / "setup.cfg").write_text(setup_cfg(target), encoding="utf-8")
    mutmut = [sys.executable, "-m", "mutmut"]
    module = target.module.removesuffix(".py").replace("/", ".")
    names = [f"{module}.{function}__mutmut_*" for function in target.functions]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = ["nice", "-n", "19", *mutmut, "run", "--max-children", "1", *names]
    with open(copy / "mutmut.log", "w") as log:
        subprocess.run(command, cwd=copy, env=env, stdout=log, stderr=subprocess.STDOUT)
    listing = subprocess.run(
        [*mutmut, "results", "--all", "true"], cwd=copy, capture_output=True, text=True, env=env
    ).stdout
    statuses = {}
    for line in listing.splitlines():
        mutant, _, status = line.strip().rpartition(": ")
        if mutant.startswith(module + ".") and any(
            _matches(mutant, module, function) for function in target.functions
        ):
            statuses[mutant] = status
    # A timeout is caught too: the mutant kept its tests running 5x as long as they take.
    survivors = sorted(m for m, status in statuses.items() if status not in ("killed", "timeout"))
    return len(statuses) - len(survivors), len(statuses), survivors


def _matches(mutant: str, module: str, function: str) -> bool:
    return function == "*" or mutant.startswith(f"{module}.{function}__mutmut_")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", metavar="TARGET", help=", ".join(TARGETS))
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "bpbeval-mutate"
    )
    args = parser.parse_args()
    unknown = sorted(set(args.targets) - set(TARGETS))
    if unknown:
        parser.error(f"unknown targets {unknown}; choose from {', '.join(TARGETS)}")
    rows = []
    for name in args.targets or list(TARGETS):
        killed, total, survivors = run(name, TARGETS[name], args.workdir)
        rows.append((name, killed, total))
        score = killed / max(total, 1)
        print(f"{name}: {killed}/{total} killed ({score:.1%}) in {args.workdir / name}")
        for mutant in survivors:
            print(f"    {mutant}")
    print("\ntarget        killed  total   score")
    for name, killed, total in rows:
        print(f"{name:<13} {killed:>6}  {total:>5}  {killed / max(total, 1):6.1%}")


if __name__ == "__main__":
    main()
