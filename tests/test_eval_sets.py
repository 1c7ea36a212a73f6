"""Naming evaluation sets (dapt.core.config's mappings of named entries, stage 2's data.eval): a set
added from the command line, a config file's own list, a whole mapping replaced; the schema's
default Hub sets are read only when nothing names a set (issue 18, 2b)."""

from __future__ import annotations

import pytest

from classify.config import ClassifyConfig
from dapt.core.config import ConfigError, load_config

DEFAULT_SETS = ["imdb_test", "sst2_validation"]


def test_a_set_named_on_the_command_line_replaces_the_default_hub_sets():
    config = load_config(ClassifyConfig, None, ["data.eval.amazon.path=/data/amazon.parquet", "data.eval.amazon.text_column=review"])
    assert list(config.data.eval) == ["amazon"]
    assert config.data.eval["amazon"].path == "/data/amazon.parquet" and config.data.eval["amazon"].text_column == "review"


def test_editing_or_dropping_a_default_set_keeps_the_others():
    config = load_config(ClassifyConfig, None, ["data.eval.imdb_test.max_samples=5"])
    assert list(config.data.eval) == DEFAULT_SETS and config.data.eval["imdb_test"].max_samples == 5
    config = load_config(ClassifyConfig, None, ["data.eval.sst2_validation=null"])
    assert config.data.eval["sst2_validation"] is None


def test_a_config_file_lists_its_sets_in_full_and_the_command_line_adds_to_them(tmp_path):
    path = tmp_path / "task.yaml"
    path.write_text("data:\n  eval:\n    news_test:\n      path: /data/news\n      split: test\n")
    assert list(load_config(ClassifyConfig, path).data.eval) == ["news_test"]  # no IMDb / SST-2 from the Hub
    config = load_config(ClassifyConfig, path, ["data.eval.extra.path=/data/extra.csv"])
    assert list(config.data.eval) == ["news_test", "extra"]
    assert load_config(ClassifyConfig, "configs/demo/classify.yaml", ["data.eval.extra.path=x.csv"]).data.eval.keys() == {
        "imdb_test", "sst2_validation", "extra"}


def test_a_whole_mapping_on_the_command_line_replaces_it():
    config = load_config(ClassifyConfig, None, ["data.eval={mine: {path: /data/mine.jsonl, label_column: y}}"])
    assert list(config.data.eval) == ["mine"] and config.data.eval["mine"].label_column == "y"
    assert load_config(ClassifyConfig, None, ["data.eval={}"]).data.eval == {}


def test_an_unknown_field_of_a_new_set_is_still_an_error():
    with pytest.raises(ConfigError, match=r"data.eval.amazon.colour"):
        load_config(ClassifyConfig, None, ["data.eval.amazon.colour=red"])
