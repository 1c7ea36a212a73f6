"""Stage 2's label sets (classify/labels.py, classify/data.py): K >= 2 classes given as integers or
names, where the names come from, and every kind of bad label as one line naming file, row and value."""

from __future__ import annotations

import datasets
import pandas as pd
import pytest

from classify.data import LabelledSetConfig, load_labelled
from classify.labels import LabelSpace, names_agree
from dapt.core.sources import DataError

AG_NEWS = ("World", "Sports", "Business", "Sci/Tech")


def _write(tmp_path, split, labels, suffix="parquet", **columns):
    frame = pd.DataFrame({"text": [f"text {i}" for i in range(len(labels))], "label": labels, **columns})
    path = tmp_path / f"{split}.{suffix}"
    {"parquet": frame.to_parquet, "csv": lambda p: frame.to_csv(p, index=False),
     "jsonl": lambda p: frame.to_json(p, orient="records", lines=True)}[suffix](path)
    return LabelledSetConfig(path=str(tmp_path), split=split)


def test_string_labels_are_classes_in_sorted_order_unless_data_labels_orders_them(tmp_path):
    config = _write(tmp_path, "train", ["sports", "world", "tech", "sports"], suffix="csv")
    labelled = load_labelled(config)
    assert labelled.space.names == ("sports", "tech", "world") and labelled.labels == [0, 2, 1, 0]
    assert labelled.space.source.startswith("the sorted label strings of") and "train.csv" in labelled.space.source
    ordered = load_labelled(config, declared=["world", "sports", "tech"])
    assert ordered.space.names == ("world", "sports", "tech") and ordered.labels == [1, 0, 2, 1]
    assert ordered.space.describe() == {"num_labels": 3, "labels": ["world", "sports", "tech"], "labels_from": "data.labels"}


def test_integer_labels_take_the_names_the_data_carries(shared_data):
    """AG News's parquet files list the topics in their schema metadata ``label_names``."""
    labelled = load_labelled(LabelledSetConfig(path=str(shared_data / "ag_news"), split="test"))
    assert labelled.space.names == AG_NEWS and "label_names metadata" in labelled.space.source
    assert sorted(set(labelled.labels)) == [0, 1, 2, 3] and len(labelled) == 1600


def test_a_classlabel_feature_names_the_classes_and_data_labels_must_agree_with_it(tmp_path):
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    datasets.Dataset.from_dict({"text": ["a", "b", "c"], "label": [0, 1, 1]}, features=features).to_parquet(tmp_path / "train.parquet")
    config = LabelledSetConfig(path=str(tmp_path), split="train")
    assert load_labelled(config).space.names == ("neg", "pos")
    assert load_labelled(config, declared=["Negative", "Positive"]).space.names == ("Negative", "Positive")  # a longer name
    with pytest.raises(DataError, match=r"data.labels \['Positive', 'Negative'\] disagrees with the ClassLabel feature of .*"
                                        r"train.parquet: \['neg', 'pos'\]"):
        load_labelled(config, declared=["Positive", "Negative"])
    with pytest.raises(DataError, match="disagrees"):
        load_labelled(config, declared=["neg", "pos", "neutral"])


def test_names_agree_allows_case_punctuation_and_shortening_only():
    assert names_agree(["Sci/Tech", "World"], ["sci-tech", "world"])
    assert names_agree(["Negative", "Positive"], ["neg", "pos"])
    assert not names_agree(["Negative", "Positive"], ["pos", "neg"])
    assert not names_agree(["ab", "b"], ["abc", "b"])  # a shortening needs 3 characters
    assert not names_agree(["a", "b"], ["a", "b", "c"])


def test_integer_labels_without_names(tmp_path):
    assert load_labelled(_write(tmp_path, "train", [0, 1, 1])).space.names == ("Negative", "Positive")
    three = load_labelled(_write(tmp_path, "test", [2, 0, 1, 2]))
    assert three.space.names == ("0", "1", "2") and three.labels == [2, 0, 1, 2]
    named = load_labelled(_write(tmp_path, "dev", [2, 0, 1]), declared=["a", "b", "c"])
    assert named.space.names == ("a", "b", "c")


@pytest.mark.parametrize("labels, declared, message", [
    ([0, 1, 3], ["a", "b", "c"], r"train.parquet: column 'label' row 2 is 3: not a class index of the task's 3 classes \(0 = a"),
    (["a", "b", "x"], ["a", "b"], r"train.csv: column 'label' row 2 is 'x': not one of the task's classes \['a', 'b'\]"),
    ([0, 1, -1], None, r"row 2 is -1"),
    ([0, 1, 1], ["only"], r"data.labels: 1 class \(only\): a classifier needs at least 2 classes"),
    ([0, 1, 1], ["a", "a"], r"the class name 'a' appears twice"),
])
def test_bad_training_labels_name_file_row_and_value(tmp_path, labels, declared, message):
    config = _write(tmp_path, "train", labels, suffix="csv" if isinstance(labels[0], str) else "parquet")
    with pytest.raises(DataError, match=message):
        load_labelled(config, declared=declared)


def test_a_single_class_is_not_a_task(tmp_path):
    with pytest.raises(DataError, match="1 class .*at least 2 classes"):
        load_labelled(_write(tmp_path, "train", ["spam", "spam"], suffix="csv"))


def test_mixed_integer_and_name_labels_are_refused_naming_both_rows(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\na,World\nb,World\nc,3\nd,Sports\n")  # csv reads all as text
    with pytest.raises(DataError, match=r"train.csv: column 'label' mixes class indices and names: row 2 is '3', row 0 is 'World'"):
        load_labelled(LabelledSetConfig(path=str(tmp_path), split="train"))
    (tmp_path / "test.jsonl").write_text('{"text": "a", "label": "World"}\n{"text": "b", "label": 2}\n')
    with pytest.raises(DataError, match=r"test.jsonl.*(row 1|line 2)"):
        load_labelled(LabelledSetConfig(path=str(tmp_path), split="test"))


def test_an_evaluation_set_is_read_against_the_models_classes(tmp_path, shared_data):
    space = LabelSpace(AG_NEWS, "data.labels")
    assert load_labelled(LabelledSetConfig(path=str(shared_data / "ag_news"), split="test", max_samples=8), space=space).labels
    by_name = _write(tmp_path, "test", ["Sports", "World"], suffix="csv")
    assert load_labelled(by_name, space=space).labels == [1, 0]
    unknown = _write(tmp_path, "other", ["Sports", "Weather", "Weather"], suffix="csv")
    with pytest.raises(DataError, match=r"other.csv: column 'label' row 1 is 'Weather': not one of the task's classes.*2 of 3 rows"):
        load_labelled(unknown, space=space)
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    datasets.Dataset.from_dict({"text": ["a"], "label": [1]}, features=features).to_parquet(tmp_path / "imdb.parquet")
    with pytest.raises(DataError, match=r"imdb.parquet: the ClassLabel feature of .* names the classes \['neg', 'pos'\], but the "
                                        r"task's classes are \['World', 'Sports', 'Business', 'Sci/Tech'\]"):
        load_labelled(LabelledSetConfig(path=str(tmp_path / "imdb.parquet")), space=space)


def test_every_class_needs_a_training_example(tmp_path):
    from classify.labels import check_every_class_trained

    labelled = load_labelled(_write(tmp_path, "train", [0, 2, 2, 0]), declared=["a", "b", "c"])
    with pytest.raises(DataError, match=r"somewhere: no training example of class 'b' of \['a', 'b', 'c'\]"):
        check_every_class_trained(labelled.labels, labelled.space, "somewhere")
