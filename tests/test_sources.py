"""Sources both stages read (dapt.core.sources): the {kind: loader} table, Hub dataset ids vs
local paths, table files, .txt trees, the aclImdb layout, text cleaning."""

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dapt.core import hub, sources
from dapt.core.sources import LOADERS, DataError, SourceConfig, detect_kind, load_source
from dapt.core.text import clean_text, is_blank
from tests.helpers import sentences


def test_clean_text_turns_breaks_into_spaces():
    assert clean_text("Great.<br /><br />Loved it<br/>really<BR>  yes\n") == "Great. Loved it really yes"
    assert clean_text("  <br />  ") == ""


def test_is_blank_is_what_cleaning_empties():
    """Stage 1 drops documents with is_blank before the split and cleans the rest as it tokenizes:
    the two must agree on every text (random strings of tags, Unicode spaces and letters)."""
    import random

    spaces = [chr(c) for c in range(0x3001) if chr(c).isspace()]  # \x1c-\x1f, \x85, \xa0, \u2000-\u200a, ...
    pieces = ["<br />", "<br/>", "<BR>", "<br   >", "<br", "/>", ">", "<", "br", " ", "\n", "x", "é", *spaces]
    rng = random.Random(0)
    texts = [None, "", " ", "<br /><br />", "a", "<br />a", "<bR\t/>\u3000", "<br <br/>"]
    texts += ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 6))) for _ in range(5000)]
    assert [is_blank(t) for t in texts] == [clean_text(t or "") == "" for t in texts]
    # clean_text's split/join is the two-regex definition it replaced
    texts = [t for t in texts if t is not None] + ["a  b\t\nc<br/>d\u3000e\x1cf ", "\u2003x<BR >\xa0y\x85"]
    assert [clean_text(t) for t in texts] == [re.sub(r"\s+", " ", re.sub(r"<br\s*/?>", " ", t, flags=re.I)).strip() for t in texts]


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


def test_every_kind_is_in_the_loader_table_and_an_unknown_kind_lists_them(tmp_path):
    assert list(LOADERS) == ["hub", "files", "text_dir", "aclimdb"]
    with pytest.raises(DataError, match="kind 'xml'.*expected auto, hub, files, text_dir, aclimdb"):
        detect_kind(SourceConfig(path=str(tmp_path), kind="xml"))


def test_a_new_kind_is_one_entry_in_the_table(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setitem(sources.LOADERS, "lines", lambda source, num_proc: [
        datasets.Dataset.from_dict({"text": open(source.path).read().splitlines()})])
    path = tmp_path / "corpus.lines"
    path.write_text("one\ntwo\nthree\n")
    assert load_source(SourceConfig(path=str(path), kind="lines"))["text"] == ["one", "two", "three"]


def test_auto_kind_tells_hub_ids_from_paths(tmp_path):
    assert detect_kind(SourceConfig(path="stanfordnlp/imdb")) == "hub"
    assert detect_kind(SourceConfig(path="imdb")) == "hub"
    for missing in (str(tmp_path / "nope.parquet"), "./nope", "a/b/c", "~/nope-dapt-test", "my corpus.jsonl"):
        with pytest.raises(DataError, match="data source not found"):
            detect_kind(SourceConfig(path=missing))
    (tmp_path / "t.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    assert detect_kind(SourceConfig(path=str(tmp_path / "t.jsonl"))) == "files"
    assert detect_kind(SourceConfig(path=str(tmp_path / "*.jsonl"))) == "files"


def test_hub_id_or_path_is_one_rule(tmp_path, monkeypatch):
    for name in ("stanfordnlp/imdb", "distilbert/distilbert-base-uncased", "imdb", "runs/not-there-yet"):
        assert hub.is_repo_id(name) and not hub.looks_local(name) and hub.is_hub_id(name)
    for name in ("./x", "/abs/path", "~/x", "a/b/c", "foo--bar", "x..y", "my model", "", "-lead"):
        assert hub.looks_local(name) and not hub.is_hub_id(name)
    assert not hub.is_repo_id("imdb", owner_required=True) and hub.is_repo_id("owner/imdb", owner_required=True)
    assert not hub.is_hub_id(None) and not hub.is_repo_id(3)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "dapt").mkdir(parents=True)  # an existing folder is a path, even if spelled like an id
    assert hub.is_repo_id("runs/dapt") and hub.looks_local("runs/dapt") and not hub.is_hub_id("runs/dapt")


def test_max_documents_selects_what_shuffle_then_select_would(tmp_path):
    """The seeded subset, in the same order, without datasets' shuffle (a Python list of every row)."""
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"text": f"{t} {i}"}) + "\n" for i, t in enumerate(sentences(200, seed=4))))
    whole = load_source(SourceConfig(path=str(path)))
    subset = load_source(SourceConfig(path=str(path), max_documents=30), seed=9)
    assert subset[:]["text"] == whole.shuffle(seed=9).select(range(30))[:]["text"]


def test_the_split_datasets_builds_is_named_as_read(shared_data, tmp_path):
    """datasets prints "Generating NAME split" while it converts files: a test split is not "train"."""
    from dapt.core.sources import _from_files, _table_files

    source = SourceConfig(path=str(shared_data / "imdb"), splits=["test"], label_column="label")
    [files] = _table_files(source)
    assert str(_from_files(source, files).split) == "test"
    single = SourceConfig(path=str(shared_data / "sst2" / "validation.parquet"), text_column="sentence", label_column="label")
    assert str(load_source(single).split) == "validation"
