"""Binary runs give the same numbers before and after stage 2 learned K classes (issue 18).

``tests/data/binary_golden.json`` was written by this file's ``write_golden`` with the code as it was
before (commit 3ea349d): a fixed tiny run (the tiny random encoder, 400 IMDb training reviews, 3
epochs), every number of its ``results.json`` that does not depend on the clock or the machine's
paths. The run is repeated here and compared key by key: a key the golden file has must still be
there with the same value (floats to 1e-6 relative: the same arithmetic on the same CPU build).
One edit by hand since: ``hyperparameters.head_tokens`` and ``window_stride`` 128 -> 16, when their
defaults became ``min(128, max_length // 4)`` (issue 20: 128 is invalid for this run's 64-token
windows); the run truncates at the head, so neither is read and no number moved.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from classify.train import train_classifier
from tests.test_classify_train import tiny_config

GOLDEN = Path(__file__).resolve().parent / "data" / "binary_golden.json"
CLOCK_KEYS = {"created", "wall_time_s", "train_samples_per_s", "base_model", "plots", "dataset"}


def comparable(results: dict) -> dict:
    """``results`` without what depends on the clock or on where the test ran."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in CLOCK_KEYS}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value
    return strip(results)


def differences(golden, found, where="results") -> list[str]:
    """Each place where ``found`` lacks or changes a value of ``golden`` (new keys are allowed)."""
    if isinstance(golden, dict):
        if not isinstance(found, dict):
            return [f"{where}: {found!r} is not a mapping"]
        out = []
        for key, value in golden.items():
            if key not in found:
                out.append(f"{where}.{key}: missing")
            else:
                out += differences(value, found[key], f"{where}.{key}")
        return out
    if isinstance(golden, list):
        if not isinstance(found, list) or len(found) != len(golden):
            return [f"{where}: {found!r} != {golden!r}"]
        return [d for i, (g, f) in enumerate(zip(golden, found)) for d in differences(g, f, f"{where}[{i}]")]
    if isinstance(golden, float) and isinstance(found, (int, float)) and not isinstance(found, bool):
        same = math.isclose(golden, found, rel_tol=1e-6, abs_tol=1e-9) or (math.isnan(golden) and math.isnan(found))
        return [] if same else [f"{where}: {found!r} != {golden!r}"]
    return [] if golden == found else [f"{where}: {found!r} != {golden!r}"]


#: enough rows and steps for the tiny encoder to predict both classes (F1 > 0, T far from its bounds)
OVERRIDES = ("data.train.max_samples=400", "train.epochs=3", "data.balance_labels=true", "train.encoder_lr=3e-3",
             "train.head_lr=1e-2")


def run(encoder_dir, data_dir, output_dir) -> dict:
    return train_classifier(tiny_config(encoder_dir, data_dir, output_dir, *OVERRIDES))


def test_a_binary_run_gives_the_numbers_it_gave_before(tiny_headless_encoder_dir, shared_data, tmp_path):
    golden = json.loads(GOLDEN.read_text())
    found = comparable(run(tiny_headless_encoder_dir, shared_data, tmp_path / "run"))
    problems = differences(golden, found)
    assert not problems, "\n".join(problems[:20])


def write_golden() -> None:  # pragma: no cover - run by hand, only with the code the numbers must match
    import tempfile

    from tests.helpers import SHARED_DATA, build_tiny_encoder

    with tempfile.TemporaryDirectory() as tmp:
        encoder = build_tiny_encoder(Path(tmp) / "encoder", with_mlm_head=False)
        results = run(encoder, SHARED_DATA, Path(tmp) / "run")
    GOLDEN.write_text(json.dumps(comparable(results), indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":  # python -m tests.test_binary_regression
    write_golden()
    sys.exit(0)
