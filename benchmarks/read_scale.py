"""Reading a corpus with 1 and with 2 worker processes: does reading scale? (issue 21)

``python -m benchmarks.read_scale --size 1G --workers 1,2 --repeats 2 --scratch /tmp/dapt-read``

Generates a corpus (:mod:`benchmarks.corpus_gen`, JSON-lines shards of 64 MiB), then times
:func:`dapt.data.load_corpus` (the files converted into the ``datasets`` cache, blank documents
dropped: what the main process does alone before the held-out split) with each worker count in
turn, repeats alternating, every run on a fresh cache, in its own process
(``benchmarks.corpus_prepare --read-only``). Per run: wall seconds, CPU seconds of all processes,
and the CPU seconds of the busiest lane (:func:`busiest_lane_cpu`): with as many free cores as
workers, the wall time tends to that, so the single reader's lane over the N readers' is the
speed-up reading gets from N cores, whatever the load of a shared machine does to the wall times.
(Arrow's JSON reader would use more than one thread per process; ``OMP_NUM_THREADS=1``, which
``torchrun`` sets for its ranks and Arrow obeys, keeps it to one, as in stage 1's runs.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

import pyarrow.parquet as pq

from benchmarks.corpus_gen import SentencePool, write_corpus
from benchmarks.corpus_scale import REPO, SHARED_DATA, child_env, parse_size
from benchmarks.process_monitor import run_monitored


def busiest_lane_cpu(main_cpu_s: float, workers_cpu_s: float, processes: list[dict]) -> float:
    """CPU seconds on the critical path: the main process's own, plus, for each pool of workers
    (processes that lived at the same time; ``datasets`` starts one pool per step), its busiest
    worker's. The monitor samples a worker's CPU time until its last sample, so each worker's is
    scaled so that they add up to ``workers_cpu_s`` (exact: reaped children's, from ``os.times``)."""
    workers = sorted((p for p in processes if p["role"] != "main"), key=lambda p: p["seen_s"][0])
    sampled = sum(p["cpu_s"] for p in workers)
    scale = workers_cpu_s / sampled if sampled > 0 else 0.0
    pools: list[list[dict]] = []
    for worker in workers:
        if pools and worker["seen_s"][0] <= max(p["seen_s"][1] for p in pools[-1]):
            pools[-1].append(worker)
        else:
            pools.append([worker])
    return main_cpu_s + sum(scale * max(p["cpu_s"] for p in pool) for pool in pools)


def read_once(corpus: Path, workers: int, cache: Path, out: Path) -> dict:
    shutil.rmtree(cache, ignore_errors=True)
    command = [sys.executable, "-m", "benchmarks.corpus_prepare", "--read-only", "--corpus", str(corpus / "*.jsonl"),
               "--out", str(out)] + (["--num-proc", str(workers)] if workers > 1 else [])
    load = os.getloadavg()[0]
    code, wall, memory, stderr = run_monitored(command, env=child_env(cache), cwd=cache.parent)
    if code != 0:
        raise RuntimeError(f"reading failed ({code}):\n{stderr}")
    result = json.loads(out.read_text())
    # the main process's CPU in the reading span (not its imports), the workers' whole lives
    lane = busiest_lane_cpu(result["main_cpu_s"], result["cpu_s"] - result["main_cpu_s"], memory["processes"])
    shutil.rmtree(cache)
    return {"workers": workers, "seconds": result["seconds"], "cpu_s": result["cpu_s"], "busiest_lane_cpu_s": lane,
            "main_cpu_s": result["main_cpu_s"], "documents": result["stats"]["documents"], "load": load,
            "processes": [(p["role"], p["cpu_s"], p["seen_s"]) for p in memory["processes"]]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("1G"))
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--scratch", required=True, help="a folder outside the repository")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    scratch = Path(args.scratch).resolve()
    if scratch == REPO or REPO in scratch.parents:
        parser.error(f"--scratch {scratch} is inside the repository; use a folder outside it")
    scratch.mkdir(parents=True, exist_ok=True)
    reviews = pq.read_table(SHARED_DATA / "imdb" / "unsupervised.parquet", columns=["text"]).column("text").to_pylist()
    folder = scratch / "read-corpus"
    shutil.rmtree(folder, ignore_errors=True)
    corpus = write_corpus(SentencePool.from_texts(reviews), folder, args.size, seed=args.seed)
    runs = []
    try:
        for _ in range(args.repeats):
            for workers in [int(w) for w in args.workers.split(",")]:
                runs.append(read_once(folder, workers, scratch / "read-cache", scratch / "read.json"))
                print(json.dumps(runs[-1]), flush=True)
    finally:
        shutil.rmtree(folder)
    summary = {}
    for workers in sorted({r["workers"] for r in runs}):
        mine = [r for r in runs if r["workers"] == workers]
        summary[workers] = {key: statistics.median(r[key] for r in mine) for key in ("seconds", "cpu_s", "busiest_lane_cpu_s")}
        summary[workers]["runs"] = len(mine)
    first = min(summary)
    for workers, row in summary.items():
        row["wall_speedup"] = summary[first]["seconds"] / row["seconds"]
        row["lane_cpu_speedup"] = summary[first]["busiest_lane_cpu_s"] / row["busiest_lane_cpu_s"]
        row["mb_per_lane_cpu_s"] = corpus["bytes"] / row["busiest_lane_cpu_s"] / 1e6
    report = {"corpus": corpus, "runs": runs, "summary": summary}
    print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
