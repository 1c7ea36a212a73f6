"""Corpus sources, cleaning, held-out split and packing (stage 1 data)."""

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dapt.data import DataError, SourceConfig, clean_text, load_corpus, load_source, pack_blocks, split_heldout
from tests.helpers import _WORDS


def sentences(n, seed=0, words=(5, 40)):
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(*words))) for _ in range(n)]


def test_clean_text_turns_breaks_into_spaces():
    assert clean_text("Great.<br /><br />Loved it<br/>really<BR>  yes\n") == "Great. Loved it really yes"
    assert clean_text("  <br />  ") == ""


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "csv"])
def test_table_files_with_text_column(tmp_path, fmt):
    texts = sentences(20)
    path = tmp_path / f"corpus.{fmt}"
    if fmt == "parquet":
        pq.write_table(pa.table({"review": texts, "n": list(range(20))}), path)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({"review": t, "n": i}) + "\n" for i, t in enumerate(texts)))
    else:
        path.write_text("review,n\n" + "".join(f'"{t}",{i}\n' for i, t in enumerate(texts)))
    dataset = load_source(SourceConfig(path=str(path), text_column="review"))
    assert dataset.column_names == ["text"]
    assert dataset["text"] == texts


def test_directory_of_split_files_and_labels(tmp_path):
    for split, n in (("train", 6), ("test", 4)):
        pq.write_table(pa.table({"text": sentences(n, seed=n), "label": [i % 2 for i in range(n)]}), tmp_path / f"{split}.parquet")
    dataset = load_source(SourceConfig(path=str(tmp_path), splits=["train", "test"], label_column="label"))
    assert len(dataset) == 10 and set(dataset.column_names) == {"text", "label"}
    with pytest.raises(DataError, match="no file for split 'unsupervised'"):
        load_source(SourceConfig(path=str(tmp_path), splits=["unsupervised"]))


def test_txt_directory_and_aclimdb_layout(tmp_path):
    docs = tmp_path / "docs" / "nested"
    docs.mkdir(parents=True)
    for i, text in enumerate(sentences(3)):
        (docs / f"{i}.txt").write_text(text)
    assert len(load_source(SourceConfig(path=str(tmp_path / "docs")))) == 3

    root = tmp_path / "aclImdb"
    for sub, n in (("train/pos", 3), ("train/neg", 2), ("train/unsup", 4), ("test/pos", 1), ("test/neg", 1)):
        (root / sub).mkdir(parents=True)
        for i, text in enumerate(sentences(n, seed=len(sub))):
            (root / sub / f"{i}_7.txt").write_text(text)
    train = load_source(SourceConfig(path=str(root), splits=["train"], label_column="label"))
    assert sorted(train["label"]) == [0, 0, 1, 1, 1]
    both = load_source(SourceConfig(path=str(root), splits=["train", "unsupervised"]))
    assert len(both) == 9


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
