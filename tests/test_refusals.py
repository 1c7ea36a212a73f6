"""Where a run must not write, and how a refusal reads (issue 19 items 4 and 7).

Item 4, injected: an ``output_dir`` that is, contains or is inside the model being read (stage 1
``model.name_or_path``, stage 2 ``model.encoder``) or an input data path, ``overwrite=true``
included, and ``output_dir=.`` in a directory holding other files. Checked: a ConfigError naming
both keys before anything is written; the inputs byte for byte as they were.

Item 7, injected through the real commands (subprocesses): a finished folder without
``overwrite``, stage 2 started in a folder stage 1 is writing, ``output_dir=/proc/self``, a YAML
error inside an override value, and the block_size / held-out / sources errors. Checked: a
nonzero exit, no traceback, the error exactly once on stderr (and nothing else on stderr for the
refusals raised before the Accelerator exists).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from dapt.core.config import ConfigError
from tests.test_faults import REPO, labelled, run1, run2, stage1_args, stage2_args  # noqa: F401 - labelled: a fixture
from tests.test_pretrain import write_corpus


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def encoder(tmp_path, tiny_encoder_dir):
    copy = tmp_path / "models" / "encoder"
    shutil.copytree(tiny_encoder_dir, copy)
    return copy


@pytest.mark.parametrize("where, relation", [("same", "is"), ("inside", "is inside"), ("parent", "contains")])
def test_stage1_refuses_to_write_where_its_model_is(where, relation, tmp_path, encoder):
    corpus = write_corpus(tmp_path / "corpus.jsonl", 40)
    out = {"same": encoder, "inside": encoder / "run", "parent": encoder.parent}[where]
    before = snapshot(encoder)
    with pytest.raises(ConfigError, match=rf"output_dir {out} {relation} the model being read \(model.name_or_path={encoder}\)"):
        run1(stage1_args(encoder, corpus, out, **{"overwrite": "true"}))
    assert snapshot(encoder) == before and not (encoder / "run").exists()


def test_stage1_refuses_to_write_where_its_corpus_is(tmp_path, tiny_encoder_dir):
    data = tmp_path / "data"
    data.mkdir()
    corpus = write_corpus(data / "corpus.jsonl", 40)
    with pytest.raises(ConfigError, match=r"output_dir .*data contains an input \(data.sources.0.path="):
        run1(stage1_args(tiny_encoder_dir, corpus, data))
    assert sorted(p.name for p in data.iterdir()) == ["corpus.jsonl"]


@pytest.mark.parametrize("target, key", [("encoder", "model.encoder"), ("data", "data.train.path"), ("eval", "data.eval.imdb_test.path")])
def test_stage2_refuses_to_write_where_it_reads(target, key, tmp_path, tiny_headless_encoder_dir, labelled):
    encoder = tmp_path / "encoder"
    shutil.copytree(tiny_headless_encoder_dir, encoder)
    evaluation = tmp_path / "eval"
    shutil.copytree(labelled, evaluation)
    out = {"encoder": encoder, "data": labelled, "eval": evaluation / "sub"}[target]
    with pytest.raises(ConfigError, match=rf"output_dir .* \({key}="):
        run2(stage2_args(encoder, labelled, out, **{"data.eval.imdb_test.path": evaluation, "overwrite": "true"}))
    assert not (encoder / "results.json").exists() and not (labelled / "config.yaml").exists() and not (evaluation / "sub").exists()


def test_output_dir_dot_is_refused_where_the_directory_holds_other_files(tmp_path, tiny_encoder_dir, monkeypatch):
    corpus = write_corpus(tmp_path / "corpus.jsonl", 40)
    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("a project\n")
    monkeypatch.chdir(project)
    with pytest.raises(ConfigError, match=r"output_dir \. is the current directory, which holds other files \(README.md\)"):
        run1(stage1_args(tiny_encoder_dir, corpus, "."))
    assert sorted(p.name for p in project.iterdir()) == ["README.md"]
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    assert run1(stage1_args(tiny_encoder_dir, corpus, ".", **{"train.max_steps": 1}))["steps"] == 1  # an empty one is fine
    run1(stage1_args(tiny_encoder_dir, corpus, ".", **{"train.max_steps": 1, "overwrite": "true"}))  # and so is its own run


# --------------------------------------------------------------------------------------------
# item 7: one line, no traceback


def command(module: str, *args, cwd=REPO):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


@pytest.mark.slow  # four commands (~4 s each: importing torch and transformers)
def test_refusals_before_the_accelerator_exist_are_one_line(tmp_path, tiny_encoder_dir):
    corpus = write_corpus(tmp_path / "corpus.jsonl", 40)
    finished = tmp_path / "finished"  # what a finished stage-1 run leaves besides its model
    finished.mkdir()
    for name in ("config.yaml", "metrics.jsonl", "dapt_summary.json"):
        (finished / name).write_text("{}\n")
    writing = tmp_path / "stage1_writing"  # what stage 1 has written a moment after it started
    writing.mkdir()
    (writing / "config.yaml").write_text("output_dir: x\n")
    (writing / "metrics.jsonl").write_text("")
    cases = {
        "finished folder": (command("dapt.pretrain", *stage1_args(tiny_encoder_dir, corpus, finished)), "holds a previous run"),
        "stage 2 in stage 1's folder": (command("classify.train", f"output_dir={writing}"), "holds a previous run"),
        "/proc/self": (command("dapt.pretrain", *stage1_args(tiny_encoder_dir, corpus, "/proc/self")), "/proc/self"),
        "YAML in an override": (command("dapt.pretrain", "train.lr=[1"), "train.lr=[1"),
    }
    for name, (result, expected) in cases.items():
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (name, result.stderr[-3000:])


@pytest.mark.slow  # three commands (~6 s each)
def test_data_errors_are_reported_once_without_traceback(tmp_path, tiny_encoder_dir):
    corpus = write_corpus(tmp_path / "corpus.jsonl", 40)
    cases = {
        "block_size": (stage1_args(tiny_encoder_dir, corpus, tmp_path / "a", **{"data.block_size": 1024}), "'data.block_size': got 1024"),
        "heldout": (stage1_args(tiny_encoder_dir, corpus, tmp_path / "b", **{"data.heldout": 100}), "held-out size 100"),
        "sources": (stage1_args(tiny_encoder_dir, tmp_path / "missing.jsonl", tmp_path / "c"), "data source not found"),
    }
    for name, (args, expected) in cases.items():
        result = command("dapt.pretrain", *args)
        assert result.returncode != 0 and "Traceback" not in result.stderr, (name, result.stderr[-3000:])
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:") or " ERROR " in line]
        assert result.stderr.count(expected) == 1 and len(errors) == 1, (name, result.stderr[-3000:])
