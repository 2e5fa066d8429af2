"""Document readers: Parquet, JSONL and text streaming, caps, and clear errors."""

from __future__ import annotations

import json
import pydoc_data.topics
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bpbeval.data import Document, cap_texts, read_documents, read_texts
from bpbeval.errors import DataError

TEXTS = [*list(pydoc_data.topics.topics.values())[:40], "東京 🙂 e\u0301", "", "  \n\t"]


def write_parquet(path: Path, texts: list[str], *, row_group_size: int = 7, **columns) -> None:
    table = pa.table({"text": texts, **columns})
    pq.write_table(table, path, row_group_size=row_group_size)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), "utf-8")


def test_parquet_streams_every_row_group_in_order(tmp_path):
    domains = [f"d{i % 3}" for i in range(len(TEXTS))]
    write_parquet(tmp_path / "shard_00000.parquet", TEXTS, domain=domains)
    assert pq.ParquetFile(tmp_path / "shard_00000.parquet").num_row_groups > 5
    docs = list(read_documents(tmp_path / "shard_00000.parquet", domain_column="domain"))
    expected = [
        Document(f"shard_00000.parquet:{i}", t, d)
        for i, (t, d) in enumerate(zip(TEXTS, domains, strict=True))
    ]
    assert docs == expected


def test_parquet_custom_text_column_and_binary_utf8(tmp_path):
    table = pa.table({"content": pa.array([t.encode() for t in TEXTS], pa.binary())})
    pq.write_table(table, tmp_path / "a.parquet")
    assert [d.text for d in read_documents(tmp_path, text_column="content")] == TEXTS


def test_jsonl_skips_blank_lines_and_keeps_unicode(tmp_path):
    path = tmp_path / "a.jsonl"
    rows = [{"text": t, "lang": "x"} for t in TEXTS]
    write_jsonl(path, rows)
    path.write_text(path.read_text("utf-8") + "\n\n", "utf-8")
    docs = list(read_documents(path, domain_column="lang"))
    assert [d.text for d in docs] == TEXTS
    assert {d.domain for d in docs} == {"x"}
    assert [d.id for d in docs] == [f"a.jsonl:{i}" for i in range(len(TEXTS))]


def test_directories_expand_sorted_recursively_to_data_files(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("zz", "utf-8")
    (tmp_path / "a.txt").write_text("aa", "utf-8")
    (tmp_path / ".hidden.txt").write_text("hidden", "utf-8")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref", "utf-8")
    write_jsonl(tmp_path / "c.jsonl", [{"text": "c0"}, {"text": "c1"}])
    write_parquet(tmp_path / "D.PARQUET", ["d0"])  # suffixes in any case
    # Not data: each would be scored as one more document and change the bpb.
    for name in ("README.md", "b/LICENSE", "b/notes.json", "a.txt.bak"):
        (tmp_path / name).write_text("not a document", "utf-8")
    notices: list[str] = []
    docs = list(read_documents(tmp_path, on_skipped=notices.append))
    assert [(d.id, d.text) for d in docs] == [
        ("D.PARQUET:0", "d0"),
        ("a.txt:0", "aa"),
        ("b/z.txt:0", "zz"),
        ("c.jsonl:0", "c0"),
        ("c.jsonl:1", "c1"),
    ]
    ids = [d.id for d in docs]
    assert len(set(ids)) == len(ids)
    skipped = ", ".join(str(tmp_path / n) for n in ("README.md", "a.txt.bak", "b/LICENSE"))
    assert notices == [
        f"skipped 4 files that are not data (.parquet, .jsonl, .txt): {skipped}, "
        f"{tmp_path / 'b/notes.json'}"
    ]
    # Hidden files (.hidden.txt, .git/) are skipped without a word, as before.
    assert list(read_documents(tmp_path)) == docs


def test_a_readme_beside_the_shards_changes_nothing(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    write_parquet(shards / "shard_00000.parquet", TEXTS[:10])
    write_parquet(shards / "shard_00001.parquet", TEXTS[10:20])
    alone = list(read_documents(shards))
    (shards / "README.md").write_text("# The corpus\n\nTwo shards of help topics.\n", "utf-8")
    notices: list[str] = []
    assert list(read_documents(shards, on_skipped=notices.append)) == alone
    assert [d.text for d in alone] == TEXTS[:20]
    assert len(notices) == 1 and notices[0].endswith(f"{shards / 'README.md'}")


def test_many_skipped_files_are_counted_after_the_first_five(tmp_path):
    (tmp_path / "a.txt").write_text("a", "utf-8")
    for i in range(8):
        (tmp_path / f"n{i}.md").write_text("x", "utf-8")
    notices: list[str] = []
    list(read_documents(tmp_path, on_skipped=notices.append))
    names = ", ".join(str(tmp_path / f"n{i}.md") for i in range(5))
    assert notices == [
        f"skipped 8 files that are not data (.parquet, .jsonl, .txt): {names} and 3 more"
    ]


def test_a_file_named_directly_is_read_whatever_its_suffix(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\nhéllo\n", "utf-8")
    notices: list[str] = []
    docs = list(read_documents(readme, on_skipped=notices.append))
    assert docs == [Document("README.md:0", "# Title\n\nhéllo\n")]
    assert notices == []


def test_a_directory_of_no_data_files_says_what_it_skipped(tmp_path):
    (tmp_path / "README.md").write_text("x", "utf-8")
    with pytest.raises(DataError, match=r"no documents found .*skipped 1 file that is not data"):
        list(read_documents(tmp_path))


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_a_null_domain_is_none_and_a_string_is_kept(tmp_path, fmt):
    domains = ["web", None, "", "code"]
    path = tmp_path / f"d.{fmt}"
    texts = [f"t{i}" for i in range(len(domains))]
    if fmt == "jsonl":
        write_jsonl(path, [{"text": t, "domain": d} for t, d in zip(texts, domains, strict=True)])
    else:
        write_parquet(path, texts, domain=pa.array(domains, pa.string()))
    docs = list(read_documents(path, domain_column="domain"))
    assert [d.domain for d in docs] == domains


# Every value that is not a string: a number (1, 1.0 and True would each become a label of
# their own or one another's depending on the writer), a list, a mapping.
NOT_STRINGS = [
    (7, "int 7"),
    (2.5, "float 2.5"),
    (True, "bool True"),
    ([1, 2], "list [1, 2]"),
    ({"name": "web"}, "dict {'name': 'web'}"),
]


@pytest.mark.parametrize(("value", "shown"), NOT_STRINGS)
def test_a_jsonl_domain_that_is_not_a_string_is_refused(tmp_path, value, shown):
    path = tmp_path / "d.jsonl"
    write_jsonl(path, [{"text": "a", "domain": "web"}, {"text": "b", "domain": value}])
    docs = read_documents(path, domain_column="domain")
    assert next(docs).domain == "web"
    with pytest.raises(DataError) as e:
        next(docs)
    assert str(e.value) == (
        f"{path}: line 2: domain 'domain' holds {shown}, not a string; "
        "write domain labels as strings (or null for none)"
    )


@pytest.mark.parametrize(("value", "shown"), NOT_STRINGS)
def test_a_parquet_domain_that_is_not_a_string_is_refused(tmp_path, value, shown):
    path = tmp_path / "d.parquet"
    write_parquet(path, ["a", "b"], domain=pa.array([None, value]))
    docs = read_documents(path, domain_column="domain")
    assert next(docs).domain is None
    with pytest.raises(DataError) as e:
        next(docs)
    assert str(e.value) == (
        f"{path}: row 1: domain 'domain' holds {shown}, not a string; "
        "write domain labels as strings (or null for none)"
    )


@pytest.mark.parametrize(("value", "shown"), [*NOT_STRINGS, (None, "NoneType None")])
@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_a_text_that_is_not_text_is_refused_alike_in_both_formats(tmp_path, fmt, value, shown):
    path = tmp_path / f"t.{fmt}"
    if fmt == "jsonl":
        write_jsonl(path, [{"text": value}])
        where = "line 1: key 'text'"
    else:
        pq.write_table(pa.table({"text": pa.array([value])}), path)
        where = "row 0: column 'text'"
    with pytest.raises(DataError) as e:
        list(read_documents(path))
    assert str(e.value) == f"{path}: {where} holds {shown}, not text"


def test_a_domain_column_or_key_is_used_without_asking(tmp_path):
    # Named "domain", it gives per-domain figures by default; where absent, no domain.
    write_jsonl(
        tmp_path / "a.jsonl",
        [{"text": "x", "domain": "web"}, {"text": "y"}, {"text": "z", "domain": None}],
    )
    write_parquet(tmp_path / "b.parquet", ["p", "q"], domain=["code", "prose"])
    write_parquet(tmp_path / "c.parquet", ["r"])
    got = [(d.text, d.domain) for d in read_documents(tmp_path)]
    assert got == [
        ("x", "web"),
        ("y", None),
        ("z", None),
        ("p", "code"),
        ("q", "prose"),
        ("r", None),
    ]
    # Asked for by name, it must be there, as any other column.
    with pytest.raises(DataError, match=r"a\.jsonl: line 2: no key 'domain'"):
        list(read_documents(tmp_path, domain_column="domain"))
    # And by default its values are checked as any domain's.
    write_jsonl(tmp_path / "a.jsonl", [{"text": "x", "domain": 3}])
    with pytest.raises(DataError, match=r"a\.jsonl: line 1: domain 'domain' holds int 3"):
        list(read_documents(tmp_path))


def test_a_binary_parquet_domain_is_utf8_text(tmp_path):
    path = tmp_path / "d.parquet"
    write_parquet(path, ["a", "b"], domain=pa.array(["wéb".encode(), b"\xff"], pa.binary()))
    docs = read_documents(path, domain_column="domain")
    assert next(docs).domain == "wéb"
    with pytest.raises(DataError, match=r"d.parquet: row 1: not valid UTF-8"):
        next(docs)


def test_max_docs_and_max_bytes_take_a_deterministic_prefix(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"text": t} for t in TEXTS])
    assert [d.text for d in read_documents(tmp_path, max_docs=5)] == TEXTS[:5]
    sizes = [len(t.encode()) for t in TEXTS]
    budget = sum(sizes[:3]) + sizes[3] - 1  # the 4th document would exceed it
    assert [d.text for d in read_documents(tmp_path, max_bytes=budget)] == TEXTS[:3]
    assert [d.text for d in read_documents(tmp_path, max_bytes=sum(sizes[:3]))] == TEXTS[:3]


def test_max_docs_never_reads_past_the_cap(tmp_path):
    # A malformed row right after the cap, in the same file and as the next file's first
    # row: neither is read, so neither is an error.
    (tmp_path / "a.jsonl").write_text('{"text": "one"}\n{"text": 7}\n', "utf-8")
    (tmp_path / "b.jsonl").write_text("not json\n", "utf-8")
    assert [d.text for d in read_documents(tmp_path / "a.jsonl", max_docs=1)] == ["one"]
    (tmp_path / "a.jsonl").write_text('{"text": "one"}\n', "utf-8")
    assert [d.text for d in read_documents(tmp_path, max_docs=1)] == ["one"]
    with pytest.raises(DataError, match=r"b\.jsonl"):  # the reference: past the cap, it is bad
        list(read_documents(tmp_path, max_docs=2))


@pytest.mark.parametrize(
    ("max_chars", "doc_cap"), [(None, None), (5000, None), (None, 300), (777, 50)]
)
def test_read_texts_caps_like_nanochat(tmp_path, max_chars, doc_cap):
    write_parquet(tmp_path / "s.parquet", TEXTS)
    got = list(read_texts(tmp_path, max_chars=max_chars, doc_cap=doc_cap))
    # Reference: cap each document, concatenate with separators, cut the total.
    capped = [t if doc_cap is None else t[:doc_cap] for t in TEXTS]
    total = sum(map(len, capped)) if max_chars is None else min(max_chars, sum(map(len, capped)))
    assert sum(map(len, got)) == total
    for text, full in zip(got, capped, strict=False):
        assert full.startswith(text)
    assert got[:-1] == capped[: len(got) - 1]
    assert got == list(cap_texts(TEXTS, max_chars=max_chars, doc_cap=doc_cap))


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        list(read_documents(tmp_path / "nope.parquet"))


def test_missing_column_names_the_available_ones(tmp_path):
    write_parquet(tmp_path / "s.parquet", ["a"])
    with pytest.raises(DataError, match=r"no column 'body'.*\['text'\]"):
        list(read_documents(tmp_path, text_column="body"))
    write_jsonl(tmp_path / "j.jsonl", [{"content": "a", "id": 1}])
    with pytest.raises(DataError, match=r"j.jsonl: line 1: no key 'text'.*\['content', 'id'\]"):
        list(read_documents(tmp_path / "j.jsonl"))


def test_non_utf8_names_file_and_offset(tmp_path):
    (tmp_path / "t.txt").write_bytes(b"caf\xc3\xa9 ok \xff rest")
    with pytest.raises(DataError, match=r"t.txt: not valid UTF-8 at byte offset 9"):
        list(read_documents(tmp_path / "t.txt"))
    (tmp_path / "j.jsonl").write_bytes(b'{"text": "a"}\n{"text": "\xe9"}\n')
    with pytest.raises(DataError, match=r"j.jsonl: line 2: not valid UTF-8 at byte offset 24"):
        list(read_documents(tmp_path / "j.jsonl"))
    pq.write_table(
        pa.table({"text": pa.array([b"ok", b"\xff"], pa.binary())}), tmp_path / "b.parquet"
    )
    with pytest.raises(DataError, match=r"b.parquet: row 1: not valid UTF-8"):
        list(read_documents(tmp_path / "b.parquet"))


def test_malformed_jsonl_line(tmp_path):
    (tmp_path / "j.jsonl").write_text('{"text": "a"}\n{"text": \n', "utf-8")
    with pytest.raises(DataError, match=r"j.jsonl: line 2: malformed JSON"):
        list(read_documents(tmp_path))
    (tmp_path / "j.jsonl").write_text('["text"]\n', "utf-8")
    with pytest.raises(DataError, match=r"line 1: expected a JSON object, got list"):
        list(read_documents(tmp_path))


def test_no_documents_and_too_small_byte_budget(tmp_path):
    with pytest.raises(DataError, match="no documents found"):
        list(read_documents(tmp_path))
    (tmp_path / "a.txt").write_text("hello", "utf-8")
    with pytest.raises(DataError, match="smaller than the first document"):
        list(read_documents(tmp_path, max_bytes=3))


def test_colliding_file_names_are_refused(tmp_path):
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "same.txt").write_text(sub, "utf-8")
    with pytest.raises(DataError, match=r"both named 'same\.txt'"):
        list(read_documents([tmp_path / "x" / "same.txt", tmp_path / "y" / "same.txt"]))
    assert [d.id for d in read_documents(tmp_path)] == ["x/same.txt:0", "y/same.txt:0"]


def test_corrupt_row_group_fails_clearly_after_the_good_ones_streamed(tmp_path):
    path = tmp_path / "s.parquet"
    pq.write_table(pa.table({"text": TEXTS}), path, row_group_size=10, compression="none")
    bad = 2
    start = pq.ParquetFile(path).metadata.row_group(bad).column(0).data_page_offset
    data = bytearray(path.read_bytes())
    data[start : start + 40] = b"\xab" * 40  # garbage over that group's data page header
    path.write_bytes(bytes(data))
    docs = read_documents(path)
    # One row group at a time: the groups before the damaged one come out first.
    assert [next(docs).text for _ in range(10 * bad)] == TEXTS[: 10 * bad]
    with pytest.raises(DataError, match=rf"s.parquet: row group {bad} is corrupt"):
        next(docs)


def test_jsonl_lone_surrogate_is_not_text(tmp_path):
    # Valid JSON, valid UTF-8 on disk, but "\ud800" decodes to a string with no UTF-8 bytes.
    (tmp_path / "j.jsonl").write_text('{"text": "a"}\n{"text": "x\\ud800"}\n', "utf-8")
    docs = read_documents(tmp_path)
    assert next(docs).text == "a"
    with pytest.raises(DataError, match=r"j.jsonl: line 2: key 'text' holds a lone surrogate"):
        next(docs)
