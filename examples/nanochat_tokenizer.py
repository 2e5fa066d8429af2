"""Convert a nanochat tokenizer directory to bpbeval's format, and audit it.

nanochat keeps its tokenizer as ``tokenizer.pkl`` (a pickled ``tiktoken.Encoding``) and
``token_bytes.pt``, whose entries come from ``len(decode([id]).encode("utf-8"))``. bpbeval
reads the pickle without running code from it, saves it as plain files, and rebuilds
``token_bytes`` from each token's raw bytes; the audit then checks, on real text, that
the tokens of every document add up to its UTF-8 bytes.

    python examples/nanochat_tokenizer.py --nanochat-dir ~/.cache/nanochat/tokenizer --out tok
    python examples/nanochat_tokenizer.py --out tok   # builds a nanochat directory first

Without ``--nanochat-dir`` it first makes one in a temporary directory exactly as
nanochat's ``scripts/tok_train.py`` does, from Python's own docs and sources.
"""

from __future__ import annotations

import argparse
import pickle
import tempfile
from pathlib import Path

import rustbpe
import tiktoken
import torch

from bpbeval.cli import positive_int
from bpbeval.demo.corpus import sources, split_text
from bpbeval.tokenizer import SPECIAL_TOKENS, SPLIT_PATTERN, Tokenizer, audit, load_nanochat


def make_nanochat_tokenizer(directory: Path, texts: list[str], vocab_size: int) -> None:
    """Write ``tokenizer.pkl`` and ``token_bytes.pt`` the way nanochat does."""
    bpe = rustbpe.Tokenizer()
    bpe.train_from_iterator(iter(texts), vocab_size - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN)
    ranks = {bytes(token): rank for token, rank in bpe.get_mergeable_ranks()}
    specials = {name: len(ranks) + i for i, name in enumerate(SPECIAL_TOKENS)}
    enc = tiktoken.Encoding(
        "rustbpe", pat_str=bpe.get_pattern(), mergeable_ranks=ranks, special_tokens=specials
    )
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "tokenizer.pkl", "wb") as f:
        pickle.dump(enc, f)
    # nanochat's recipe: the bytes of each token's *decoded string*. A token that is not
    # valid UTF-8 on its own decodes to U+FFFD and is counted as 3 bytes.
    lengths = [
        0 if i in specials.values() else len(enc.decode([i]).encode("utf-8"))
        for i in range(enc.n_vocab)
    ]
    torch.save(torch.tensor(lengths, dtype=torch.int32), directory / "token_bytes.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nanochat-dir", type=Path, help="a nanochat tokenizer directory")
    parser.add_argument("--out", type=Path, required=True, help="where to save bpbeval's")
    parser.add_argument("--vocab-size", type=positive_int, default=2048, help="when making one")
    parser.add_argument(
        "--docs", type=positive_int, default=2000, help="documents to train/audit on"
    )
    args = parser.parse_args()

    docs = [doc for _, text in sources() for doc in split_text(text, 800)]
    texts = docs[:: max(1, len(docs) // args.docs)][: args.docs]  # spread over both domains
    with tempfile.TemporaryDirectory() as tmp:
        nanochat_dir = args.nanochat_dir
        if nanochat_dir is None:
            nanochat_dir = Path(tmp) / "tokenizer"
            make_nanochat_tokenizer(nanochat_dir, texts, args.vocab_size)
            print(f"made a nanochat tokenizer ({args.vocab_size} ids) in {nanochat_dir}")

        # 1. Read the pickle with a restricted unpickler: nothing in the file runs.
        tokenizer = load_nanochat(nanochat_dir)
        # 2. Save it without pickle; loading verifies every file against the hash.
        tokenizer.save(args.out)
        loaded = Tokenizer.load(args.out)
        print(f"converted: {args.out} ({loaded.vocab_size} ids, hash {loaded.hash[:16]})")

        # 3. Where nanochat's token_bytes.pt disagrees with the exact table.
        exact = loaded.token_bytes()
        nanochat_table = nanochat_dir / "token_bytes.pt"
        if nanochat_table.is_file():
            theirs = torch.load(nanochat_table, weights_only=True)
            wrong = (theirs != exact).nonzero().flatten().tolist()
            print(
                f"token_bytes.pt: {len(wrong)} of {len(exact)} entries differ from the exact ones"
            )
            for i in wrong[:3]:
                token = loaded.encoding.decode_single_token_bytes(i)
                print(f"  id {i}: {token!r} is {int(exact[i])} bytes, counted {int(theirs[i])}")
            ids = torch.tensor([i for doc in loaded.encode_batch(texts) for i in doc])
            print(
                f"on {len(texts)} documents of {sum(len(t.encode()) for t in texts)} bytes, "
                f"token_bytes.pt counts {int(theirs[ids].sum())}, "
                f"the exact table {int(exact[ids].sum())}"
            )

    # 4. The audit: do each document's tokens stand for exactly its bytes?
    print(f"audit on {len(texts)} documents: {audit(loaded, texts)}")


if __name__ == "__main__":
    main()
