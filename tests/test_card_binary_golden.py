"""Binary IMDb cards render byte for byte as before the card learned K classes (issue 18).

``tests/data/cards/*.md`` were written by this file's ``write_golden`` with the renderer as it was
before (commit eb41e50), from results.json files of the old schema (no ``task`` / ``data`` keys):
the made-up ``fake_results`` variants of the publish tests and the real-shaped numbers of
``tests/data/binary_golden.json`` (calibration, accuracy by length, windows). Any change to a
binary IMDb card is then a visible, deliberate diff of these files. One so far: calibrated_windows.md
said "64-token windows sharing 128 tokens" (the old window_stride default, which no 64-token window can
take); since the default follows max_length (issue 20) it says 16.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest

from model_card import render_card, validate_card
from tests.test_model import fake_results

CARDS = Path(__file__).resolve().parent / "data" / "cards"
BINARY_GOLDEN = Path(__file__).resolve().parent / "data" / "binary_golden.json"
REPO_ID = "alice/tiny-imdb-sentiment"


def _real_shaped(truncation: str) -> dict:
    """The fixed tiny binary run's results.json (as tests/data/binary_golden.json holds it), with
    the keys that file leaves out (clock, paths) put back."""
    results = copy.deepcopy(json.loads(BINARY_GOLDEN.read_text()))
    results.update(created="2026-12-01T10:00:00+00:00", base_model="distilbert/distilbert-base-uncased")
    results["hyperparameters"]["truncation"] = truncation
    results["hyperparameters"]["head_tokens"] = 16
    for key, dataset in (("imdb_test", "imdb"), ("sst2_validation", "sst2")):
        results["evaluation"][key]["dataset"] = dataset  # scrubbed local folders, as dapt-publish writes them
    return results


def variants() -> dict[str, tuple[dict, list[str]]]:
    """name -> (results, plots) for every golden card."""
    plots = ["plots/imdb_test_roc.png"]
    no_sst2 = fake_results(base_model="./runs/encoder")
    del no_sst2["evaluation"]["sst2_validation"]
    worse_in_domain = fake_results(truncation="head+tail")
    worse_in_domain["evaluation"]["imdb_test"]["accuracy"] = 0.7
    return {
        "plain": (fake_results(), plots),
        "dapt_head_tail": (fake_results(dapt=True, truncation="head+tail"), plots),
        "imdb_only": (no_sst2, []),
        "no_domain_gap": (worse_in_domain, plots),
        "calibrated_windows": (_real_shaped("windows"), ["plots/confusion_imdb_test.png", "plots/reliability_imdb_test.png"]),
        "calibrated_head_tail": (_real_shaped("head+tail"), []),
        "no_evaluation": ({**fake_results(), "evaluation": {}}, []),
    }


@pytest.mark.parametrize("name", sorted(variants()))
def test_a_binary_imdb_card_is_unchanged(name):
    results, plots = variants()[name]
    card = render_card(results, REPO_ID, plots=plots)
    golden = (CARDS / f"{name}.md").read_text(encoding="utf-8")
    assert card == golden, f"the {name} card changed: diff it against {CARDS / name}.md"
    if results["evaluation"]:
        validate_card(card, results, REPO_ID)


def write_golden() -> None:  # pragma: no cover - run by hand, only with the renderer the cards must match
    CARDS.mkdir(parents=True, exist_ok=True)
    for name, (results, plots) in variants().items():
        (CARDS / f"{name}.md").write_text(render_card(results, REPO_ID, plots=plots), encoding="utf-8")


if __name__ == "__main__":  # python -m tests.test_card_binary_golden
    write_golden()
    sys.exit(0)
