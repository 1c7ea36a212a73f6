"""dapt-predict --output in processes of its own: a SIGKILL at a random point then --resume gives the
uninterrupted run's output, and memory stays flat from 20k to 200k lines (issue 21, section 2).

Synthetic text from tests/helpers.py's words and the tiny model, one torch thread per process, so
results do not depend on how busy the machine is and each run takes seconds.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import output_text, sentences
from tests.test_predict import run  # noqa: F401  (the binary run directory fixture)
from tests.test_predict_stream import read_output

ROOT = Path(__file__).resolve().parents[1]
ROWS = 8_000
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def dapt_predict(*argv, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "classify.release.predict", *map(str, argv)], env=ENV, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def finish(process: subprocess.Popen, timeout: float = 120) -> str:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, output_text(err)[-2000:]
    return output_text(err)


@pytest.mark.slow  # three processes scoring 8k lines
@pytest.mark.parametrize("out_kind", [".jsonl", ".parquet"])
def test_sigkill_at_a_random_point_then_resume_equals_an_uninterrupted_run(run, tmp_path, out_kind):
    source = tmp_path / "in.txt"
    source.write_text("\n".join(sentences(ROWS, seed=11, words=(1, 12))) + "\n", encoding="utf-8")
    argv = ["--model", run[0], "--file", source, "--probs", "--chunk-size", "500", "--batch-tokens", "8192"]
    whole, out = tmp_path / f"whole{out_kind}", tmp_path / f"out{out_kind}"
    reference = dapt_predict(*argv, "--output", whole)
    killed = dapt_predict(*argv, "--output", out)
    record = Path(f"{out}.dapt-resume.json")
    deadline = time.monotonic() + 120
    while not (record.is_file() and json.loads(record.read_text())["rows"] > 0):  # a chunk is written
        assert killed.poll() is None and time.monotonic() < deadline, output_text(killed.communicate()[1])[-2000:]
        time.sleep(0.02)
    seed = random.randrange(1000)
    time.sleep(random.Random(seed).uniform(0, 0.5))
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    assert killed.returncode == -signal.SIGKILL, f"the run ended before the kill (seed {seed})"
    report = finish(dapt_predict(*argv, "--output", out, "--resume"))
    finish(reference)
    written, held = (int(x) for x in _numbers(report))
    assert held >= 500 and written + held == ROWS, report  # the rows already written were not scored again
    if out_kind == ".parquet":
        assert read_output(out) == read_output(whole), f"seed {seed}"
    else:
        assert out.read_bytes() == whole.read_bytes(), f"seed {seed}"
    assert not record.exists() and not Path(f"{out}.parts").exists()


def _numbers(report: str) -> tuple[str, str]:
    """(rows scored by this run, rows the output held before) from the summary line."""
    import re

    found = re.search(r"(\d+) rows scored into .*, after the (\d+) it held", report)
    assert found, report
    return found.group(1), found.group(2)


PEAK_RSS = """
import io, resource, sys
from classify.release import predict
model, *files = sys.argv[1:]
for name in files:
    predict.main(["--model", model, "--file", name, "--output", name + ".jsonl", "--batch-tokens", "16384"],
                 stdout=io.StringIO(), stderr=io.StringIO())
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)  # KiB, the peak so far
"""


@pytest.mark.slow  # 220k texts through the tiny model
def test_memory_stays_flat_from_20k_to_200k_lines(run, tmp_path):
    texts = sentences(20_000, seed=7, words=(1, 6))
    small, large = tmp_path / "small.txt", tmp_path / "large.txt"
    small.write_text("\n".join(texts) + "\n", encoding="utf-8")
    large.write_text("\n".join(texts * 10) + "\n", encoding="utf-8")
    result = subprocess.run([sys.executable, "-c", PEAK_RSS, str(run[0]), str(small), str(large)], env=ENV, cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    after_small, after_large = (int(line) for line in result.stdout.split())
    assert len(read_output(Path(f"{large}.jsonl"))) == 200_000
    growth_mb = (after_large - after_small) / 1024
    print(f"\npeak RSS after the 20k-line file {after_small / 1024:.0f} MB, after the 200k-line one {after_large / 1024:.0f} MB "
          f"(+{growth_mb:.1f} MB)")  # read with -s for docs/benchmarks.md
    assert growth_mb < 50, f"peak RSS grew by {growth_mb:.0f} MB from 20k to 200k lines"
