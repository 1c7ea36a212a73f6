"""What the parts of ``tools/gpu/gpu_check.py`` share: the run's settings, running a product CLI as a
subprocess within a deadline, writing a part's JSON and its summary lines, and the small fixtures
(data slices, a small random encoder) that the smoke part and the CPU dry run train on.

Paths are resolved from this file, so the project also runs as a folder carried inside another
checkout; the data and encoder folders are arguments, and nothing here reaches the Hub.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

HARNESS = Path(__file__).resolve().parent  # tools/gpu
REPO = HARNESS.parents[1]


@dataclass
class Context:
    out: Path  # PART.json and summary.md: what comes back from the device (at most 8 files)
    work: Path  # run folders, logs, caches: stays on the machine
    data_dir: Path  # imdb/{train,test,unsupervised}.parquet, sst2/validation.parquet
    encoder_dir: Optional[Path]  # the stand-in (config, weights, tokenizer); the tokenizer alone suffices for throughput/smoke
    dry_run: bool
    device: str  # cuda | cpu
    budget_s: float  # per part
    python: str = sys.executable
    notes: list = field(default_factory=list)


class Deadline:
    def __init__(self, seconds: float):
        self.end = time.time() + seconds

    def left(self) -> float:
        return self.end - time.time()


def subprocess_env(ctx: Context) -> dict:
    env = dict(os.environ)
    inherited = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + inherited if inherited else "")  # the product, not an installed copy
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false",
               PYTHONUNBUFFERED="1", HF_DATASETS_CACHE=str(ctx.work / "datasets-cache"))
    if ctx.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    if ctx.dry_run:
        env["GPU_CHECK_COMPILE_BACKEND"] = "aot_eager"  # see tools/gpu/gpu_observe.py
    return env


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_command(ctx: Context, name: str, argv: list, deadline: Deadline, *, observe_module: Optional[str] = None) -> dict:
    """Run ``argv`` (or, with ``observe_module``, ``python -m MODULE argv`` under tools/gpu/gpu_observe.py)
    from the repository root, its output in WORK/logs/NAME.log, killed at the deadline. Returns
    ``name, command, exit_code, wall_s, timed_out, log`` (+ ``observed``: gpu_observe's report)."""
    logs = ctx.work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    report = logs / f"{name}.observed.json"
    report.unlink(missing_ok=True)
    if observe_module:
        argv = [ctx.python, str(HARNESS / "gpu_observe.py"), str(report), observe_module, *argv]
    result = {"name": name, "command": " ".join(str(a) for a in argv), "exit_code": None, "wall_s": 0.0, "timed_out": False,
              "log": str(log)}
    timeout = deadline.left()
    if timeout < 5:
        result.update(skipped="no time left in the part's budget", timed_out=True)
        return result
    started = time.time()
    print(f"[gpu_check] {name}: {result['command']}", flush=True)
    with log.open("w") as handle:
        process = subprocess.Popen([str(a) for a in argv], cwd=REPO, env=subprocess_env(ctx), stdout=handle,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            result["exit_code"] = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # its DataLoader workers and compile workers too
            process.wait()
            result["timed_out"] = True
    result["wall_s"] = round(time.time() - started, 1)
    if observe_module and report.is_file():
        result["observed"] = json.loads(report.read_text())
    if result["exit_code"] != 0:
        result["log_tail"] = tail(log)
    status = "timed out" if result["timed_out"] else f"exit {result['exit_code']}"
    print(f"[gpu_check] {name}: {status} after {result['wall_s']} s", flush=True)
    return result


def ok(result: dict) -> bool:
    return result.get("exit_code") == 0 and not result.get("timed_out")


def read_json(path: Path) -> Optional[dict]:
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def read_jsonl(path: Path) -> list:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_part(ctx: Context, part: str, result: dict, summary_lines: list) -> Path:
    """DIR/PART.json now, and the part's lines appended to DIR/summary.md: a later timeout keeps them."""
    ctx.out.mkdir(parents=True, exist_ok=True)
    path = ctx.out / f"{part}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    with (ctx.out / "summary.md").open("a") as handle:
        handle.write("\n".join(summary_lines).rstrip() + "\n\n")
    return path


def fmt(value, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


# --------------------------------------------------------------------------------------------
# Small fixtures: data slices and a small random encoder (the smoke part and the dry run)

SLICES = {  # file -> (text column, rows)
    "imdb/train.parquet": ("text", 240),
    "imdb/test.parquet": ("text", 120),
    "imdb/unsupervised.parquet": ("text", 120),
    "sst2/validation.parquet": ("sentence", 96),
}


def data_slices(source: Path, target: Path, scale: float = 1.0, seed: int = 0) -> Path:
    """A seeded random subset of each file (IMDb's labelled files are sorted by label, so a head
    would hold one class), as parquet in ``target`` with the same layout and columns."""
    import numpy as np
    import pyarrow.parquet as pq

    for name, (column, rows) in SLICES.items():
        table = pq.read_table(Path(source) / name)
        if column not in table.column_names:
            raise SystemExit(f"gpu_check: {Path(source) / name} has no column {column!r}")
        rows = min(len(table), max(8, int(rows * scale)))
        index = np.sort(np.random.default_rng(seed).choice(len(table), size=rows, replace=False))
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.take(index), target / name)
    return target


def small_encoder(tokenizer_dir: Path, target: Path, *, hidden: int, layers: int, heads: int, seed: int = 0) -> Path:
    """A random BERT without an MLM head (shaped like the stand-in, smaller) and the given tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=4 * hidden, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id or 0)
    torch.manual_seed(seed)
    if target.exists():
        shutil.rmtree(target)
    BertModel(config, add_pooling_layer=False).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def stage1_args(ctx: Context, encoder: Path, data_dir: Path, output: Path, *extra: str) -> list:
    """``--config configs/pretrain-minilm.yaml`` with local model, corpus and output; no Hub, no
    resume of an older run."""
    return ["--config", str(REPO / "configs" / "pretrain-minilm.yaml"), f"model.name_or_path={encoder}",
            f"data.sources.0.path={data_dir / 'imdb'}", f"output_dir={output}", "checkpoint.resume=null", *extra]


def stage2_args(ctx: Context, encoder: Path, data_dir: Path, output: Path, *extra: str) -> list:
    """``--config configs/classify-minilm.yaml`` reading IMDb and SST-2 from local parquet (named
    as their Hub datasets), as configs/ablate/minilm.yaml does."""
    imdb, sst2 = data_dir / "imdb", data_dir / "sst2"
    return ["--config", str(REPO / "configs" / "classify-minilm.yaml"), f"model.encoder={encoder}",
            f"data.train.path={imdb}", "data.train.name=stanfordnlp/imdb",
            f"data.eval.imdb_test.path={imdb}", "data.eval.imdb_test.name=stanfordnlp/imdb",
            f"data.eval.sst2_validation.path={sst2}", "data.eval.sst2_validation.name=stanfordnlp/sst2",
            f"output_dir={output}", "checkpoint.resume=null", *extra]
