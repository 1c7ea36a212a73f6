"""The tokenizer's own batched rate on a corpus's text: the ceiling of :mod:`benchmarks.corpus_scale`.

Reads a share of the corpus (``--part`` of ``--parts``, up to ``--max-bytes``), cleans it as stage 1
does (not timed), then times the call stage 1 makes, ``tokenizer(texts, add_special_tokens=False,
return_attention_mask=False)``, over batches of 1,000 texts. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", required=True)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--max-bytes", type=int, default=16 << 20)
    parser.add_argument("--part", type=int, default=0)
    parser.add_argument("--parts", type=int, default=1)
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    from benchmarks.corpus_gen import read_texts
    from dapt.core.text import clean_text

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    raw = read_texts(Path(args.folder), args.max_bytes, args.part, args.parts)
    raw_bytes = sum(len(t.encode()) for t in raw)  # the rate is per byte of the corpus's text, as stage 1's
    texts = [clean_text(t) for t in raw]
    tokenizer(texts[:100], add_special_tokens=False, return_attention_mask=False, verbose=False)  # warm-up
    tokens, started, cpu = 0, time.perf_counter(), time.process_time()
    for start in range(0, len(texts), 1000):
        encoded = tokenizer(texts[start : start + 1000], add_special_tokens=False, return_attention_mask=False, verbose=False)
        tokens += sum(map(len, encoded["input_ids"]))
    result = {"bytes": raw_bytes, "tokens": tokens, "seconds": time.perf_counter() - started,
              "cpu_s": time.process_time() - cpu}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
