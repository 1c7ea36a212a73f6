"""Stage 1 data: the corpus (cleaned, empty documents dropped), held-out split and packing."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dapt.core.sources import DataError, SourceConfig, load_source
from dapt.data import load_corpus, pack_blocks, split_heldout
from tests.helpers import sentences


def test_empty_documents_are_dropped_and_counted(tmp_path):
    path = tmp_path / "c.jsonl"
    rows = ["good movie", "", "<br /><br />", "   ", "bad film"]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    dataset, stats = load_corpus([SourceConfig(path=str(path))])
    assert dataset["text"] == ["good movie", "bad film"]
    assert stats["dropped_empty"] == 3 and stats["documents"] == 2


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="not found.*missing.parquet"):
        load_source(SourceConfig(path=str(tmp_path / "missing.parquet")))
    table = tmp_path / "t.parquet"
    pq.write_table(pa.table({"body": ["x"]}), table)
    with pytest.raises(DataError, match=r"t\.parquet.*no column 'text'.*body"):
        load_source(SourceConfig(path=str(table)))
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"text": ""}) + "\n")
    with pytest.raises(DataError, match="corpus is empty"):
        load_corpus([SourceConfig(path=str(empty))])
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin\.jsonl: not valid UTF-8 at byte 28 \(line 2\)"):
        load_source(SourceConfig(path=str(latin)))
    docs = tmp_path / "txt"
    docs.mkdir()
    (docs / "bad.txt").write_bytes(b"first line\nsecond \xff\xfe broken")
    with pytest.raises(DataError, match=r"bad\.txt: not valid UTF-8 at byte 18 \(line 2\)"):
        load_source(SourceConfig(path=str(docs)))


@pytest.mark.parametrize("chunk", [3, 4, 5, 7, 1 << 22])
def test_the_utf8_check_is_chunked_without_cutting_characters(tmp_path, monkeypatch, chunk):
    import dapt.core.sources as sources

    monkeypatch.setattr(sources, "UTF8_CHUNK", chunk)
    good = tmp_path / "good.jsonl"
    good.write_text('{"text": "caf\u00e9 \u20ac \U0001f3ac na\u00efve"}\n{"text": "\u00e9\u00e9"}\n', encoding="utf-8")
    sources._check_utf8(good)  # 2-, 3- and 4-byte characters across every chunk boundary
    for bad, byte, line in [(b'{"text": "ok"}\n{"text": "caf\xe9"}\n', 28, 2), (b'{"t": "\xe2\x82"}', 7, 1),
                            (b'{"t": "\x80\x80\x80\x80\x80"}\n', 7, 1), (b'{"t": "x"}\n{"t": "\xf0\x9f\x8e', 18, 2)]:
        (tmp_path / "bad.jsonl").write_bytes(bad)
        with pytest.raises(DataError, match=rf"bad\.jsonl: not valid UTF-8 at byte {byte} \(line {line}\)"):
            sources._check_utf8(tmp_path / "bad.jsonl")


def test_a_valid_file_is_checked_without_decoding_it_in_python(tmp_path, monkeypatch):
    """The check of every byte runs in the main process before the readers start: Arrow's, not Python's decoder."""
    import dapt.core.sources as sources

    def no_decoding(*args):
        raise AssertionError("the valid file was decoded in Python")

    monkeypatch.setattr(sources.codecs, "getincrementaldecoder", no_decoding)
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"text": f"caf\u00e9 {i}"}, ensure_ascii=False) + "\n" for i in range(50)), encoding="utf-8")
    assert len(load_source(SourceConfig(path=str(path)))) == 50


def test_broken_and_empty_files_say_where_and_why(tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a"}\n\n{"text": "b"}\n{"text": "c, "n": 1}\n{"text": "d"}\n')
    with pytest.raises(DataError, match=r"broken\.jsonl line 4 column 15: Expecting ',' delimiter"):
        load_source(SourceConfig(path=str(broken)))
    not_object = tmp_path / "list.jsonl"
    not_object.write_text('{"text": "a"}\n["b"]\n')
    with pytest.raises(DataError, match=r"list\.jsonl line 2: a JSON list, not an object"):
        load_source(SourceConfig(path=str(not_object)))
    array = tmp_path / "array.json"
    array.write_text('[\n  {"text": "a"},\n  {"text": "b"\n]\n')
    with pytest.raises(DataError, match=r"array\.json line 4 column 1: Expecting ',' delimiter"):
        load_source(SourceConfig(path=str(array)))
    for name, content, reason in (("empty.jsonl", "", "is empty \\(0 bytes\\)"),
                                  ("empty.parquet", "", "is empty \\(0 bytes\\)"),
                                  ("blank.jsonl", "\n\n", "holds no records"),
                                  ("header.csv", "text,label\n", "has a header but no rows")):
        (tmp_path / name).write_text(content)
        with pytest.raises(DataError, match=rf"{name.replace('.', '[.]')}:? {reason}"):
            load_source(SourceConfig(path=str(tmp_path / name)))
    bad_csv = tmp_path / "quote.csv"
    bad_csv.write_text('text,n\na,1\n"b,2\nc,3\n')
    with pytest.raises(DataError, match=r"quote\.csv: .*EOF inside string"):
        load_source(SourceConfig(path=str(bad_csv)))
    empty_split = tmp_path / "splits"
    empty_split.mkdir()
    (empty_split / "train.jsonl").write_text("")
    with pytest.raises(DataError, match=r"train\.jsonl is empty"):
        load_corpus([SourceConfig(path=str(empty_split), splits=["train"])])
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "none.parquet")
    with pytest.raises(DataError, match=r"none\.parquet: no rows"):
        load_source(SourceConfig(path=str(tmp_path / "none.parquet")))


def test_heldout_split_is_seeded_and_disjoint(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"text": f"{t} {i}"}) + "\n" for i, t in enumerate(sentences(100))))
    dataset, _ = load_corpus([SourceConfig(path=str(path))])
    train, heldout = split_heldout(dataset, 0.1, seed=3)
    again_train, again_heldout = split_heldout(dataset, 0.1, seed=3)
    assert len(heldout) == 10 and heldout["text"] == again_heldout["text"]
    assert not set(train["text"]) & set(heldout["text"])
    assert len(split_heldout(dataset, 7, seed=3)[1]) == 7
    with pytest.raises(DataError, match="nothing left"):
        split_heldout(dataset, 100, seed=0)


def test_packing_joins_documents_with_separators(tiny_tokenizer):
    import datasets

    texts = sentences(30, seed=1)
    dataset = datasets.Dataset.from_dict({"text": texts})
    blocks = pack_blocks(dataset, tiny_tokenizer, block_size=32)
    cls, sep = tiny_tokenizer.cls_token_id, tiny_tokenizer.sep_token_id
    assert all(len(b) == 32 and b[0] == cls and b[-1] == sep for b in blocks["input_ids"])
    assert blocks["index"] == list(range(len(blocks)))
    stream = []
    for text in texts:
        stream += tiny_tokenizer(text, add_special_tokens=False)["input_ids"] + [sep]
    body = [token for block in blocks["input_ids"] for token in block[1:-1]]
    assert body == stream[: len(body)] and len(stream) - len(body) < 30
    kept = pack_blocks(dataset, tiny_tokenizer, block_size=32, keep_remainder=True)
    assert [t for b in kept["input_ids"] for t in b[1:-1]] == stream


def test_cleaning_in_several_processes_gives_the_same_documents(tmp_path):
    path = tmp_path / "c.jsonl"
    rows = [f"review {i}<br /><br />ends" if i % 5 else "" for i in range(40)]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    one, one_stats = load_corpus([SourceConfig(path=str(path))])
    two, two_stats = load_corpus([SourceConfig(path=str(path))], num_proc=2)
    assert two["text"] == one["text"] and two_stats == one_stats and one_stats["dropped_empty"] == 8
