"""One run of stage 1's data preparation and nothing else (no model, no training), as a process of
:mod:`benchmarks.corpus_scale`: ``python -m benchmarks.corpus_prepare`` for one process,
``torchrun --nproc_per_node 2 -m benchmarks.corpus_prepare`` for two (gloo, ``Accelerator(cpu=True)``).

Times :func:`dapt.data.build_blocks` (read, clean, held-out split, tokenize, pack, into the
``datasets`` cache at ``HF_DATASETS_CACHE``) from after the imports to the end on every process
(wall clock, and CPU seconds of all processes and their workers), and writes one JSON line of
figures (process 0) to ``--out``. ``--read-only`` times :func:`dapt.data.load_corpus` alone (the
reading, with ``--num-proc`` workers; :mod:`benchmarks.read_scale`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def stored_tokens(blocks) -> int:
    """Token ids stored in ``blocks``, counted by Arrow (no Python list of the blocks)."""
    import pyarrow.compute as pc

    return int(pc.sum(pc.list_value_length(blocks.data.column("input_ids"))).as_py() or 0)


def cpu_seconds(children: bool = True) -> float:
    """CPU seconds of this process and of its finished children (the ``datasets`` workers, reaped)."""
    import os

    times = os.times()
    return times.user + times.system + (times.children_user + times.children_system if children else 0.0)


def read_only(args) -> dict:
    """:func:`dapt.data.load_corpus` alone, in one process with ``--num-proc`` workers: the reading."""
    from dapt.core.sources import SourceConfig
    from dapt.data import load_corpus

    started, cpu, own = time.perf_counter(), cpu_seconds(), cpu_seconds(children=False)
    documents, stats = load_corpus([SourceConfig(path=args.corpus)], seed=args.seed, num_proc=args.num_proc)
    result = {"seconds": time.perf_counter() - started, "cpu_s": cpu_seconds() - cpu,
              "main_cpu_s": cpu_seconds(children=False) - own, "stats": stats}
    Path(args.out).write_text(json.dumps(result) + "\n")
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", required=True, help="the corpus's files: a glob")
    parser.add_argument("--tokenizer", help="required unless --read-only")
    parser.add_argument("--processes", type=int, default=1, help="the number of processes this run must have")
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--heldout", type=float, default=0.01)
    parser.add_argument("--num-proc", type=int, default=None, help="data.num_proc")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--read-only", action="store_true", help="only read the files and drop blank documents (load_corpus)")
    args = parser.parse_args(argv)
    if args.read_only:
        return read_only(args)
    if not args.tokenizer:
        parser.error("--tokenizer is required (unless --read-only)")

    from accelerate import Accelerator
    from transformers import AutoTokenizer

    from dapt.core.runtime import end_run
    from dapt.core.sources import SourceConfig
    from dapt.data import CorpusConfig, build_blocks

    accelerator = Accelerator(cpu=True)
    if accelerator.num_processes != args.processes:
        raise SystemExit(f"expected {args.processes} processes, the run has {accelerator.num_processes}")
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    data = CorpusConfig(sources=[SourceConfig(path=args.corpus)], heldout=args.heldout, block_size=args.block_size,
                        num_proc=args.num_proc)
    accelerator.wait_for_everyone()
    started, cpu = time.perf_counter(), cpu_seconds()
    train, heldout, stats = build_blocks(data, tokenizer, accelerator, seed=args.seed)
    cpu = cpu_seconds() - cpu
    accelerator.wait_for_everyone()
    seconds = time.perf_counter() - started
    from accelerate.utils import gather_object

    result = {"seconds": seconds, "cpu_s": sum(gather_object([cpu])), "processes": accelerator.num_processes, "stats": stats,
              "tokens": stored_tokens(train) + stored_tokens(heldout),
              "input_ids_type": str(train.features["input_ids"]), "cache_files": len(train.cache_files)}
    if accelerator.is_main_process:
        Path(args.out).write_text(json.dumps(result, default=str) + "\n")
    end_run(accelerator)
    return result


if __name__ == "__main__":
    main()
