"""check.json is tied to the graphs it measured: the int8 graph is served only under a check that
records its SHA-256 (and that of the fp32 graph it was quantised from) as equivalent, with a boolean.

Each attack from issue 19 item 10 is its own test. The folders here hold stand-in graph bytes: every
refusal happens before ONNX Runtime reads a graph, and the accepted case is checked through the
verification itself (tests/test_export.py serves a real, checked int8 graph).
"""

from __future__ import annotations

import hashlib
import json

import pytest

pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")

from classify.release import export, export_check  # noqa: E402

FP32_BYTES, INT8_BYTES = b"fp32 graph of export A", b"int8 graph of export A"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _real_check() -> dict:
    """check.json as ``dapt-export --int8 --check`` writes it for export A (the graphs' hashes)."""
    result = {"n": 200, "agreement": 0.996, "disagreements": 1, "max_abs_prob_diff": 0.05, "mean_abs_prob_diff": 0.004,
              "accuracy_torch": 0.85, "accuracy_onnx": 0.85, "accuracy_change": 0.0}
    return {"n": 200, "texts": "IMDb test reviews", "labels": ["Negative", "Positive"],
            "reference": {"file": export.FP32_FILE, "sha256": _sha256(FP32_BYTES)},
            "variants": {"fp32": {**result, "agreement": 1.0, "disagreements": 0, "max_abs_prob_diff": 1e-6,
                                  "equivalent": True, "reason": "max |dP| 1.00e-06 <= 0.0001",
                                  "file": export.FP32_FILE, "sha256": _sha256(FP32_BYTES)},
                         "int8": {**result, "equivalent": True, "reason": "label agreement 99.60% >= 99.5%",
                                  "file": export.INT8_FILE, "sha256": _sha256(INT8_BYTES)}}}


@pytest.fixture
def folder(tmp_path):
    """Export A's folder: both graphs (stand-in bytes), config.json and its real check.json."""
    (tmp_path / export.FP32_FILE).write_bytes(FP32_BYTES)
    (tmp_path / export.INT8_FILE).write_bytes(INT8_BYTES)
    (tmp_path / "config.json").write_text(json.dumps({"id2label": {"0": "Negative", "1": "Positive"}}))
    _write_check(tmp_path, _real_check())
    return tmp_path


def _write_check(folder, document) -> None:
    text = document if isinstance(document, str) else json.dumps(document)
    (folder / export.CHECK_FILE).write_text(text, encoding="utf-8")


def _refused(folder, match: str) -> str:
    with pytest.raises(export.ExportError, match=match) as caught:
        export.OnnxClassifier(folder, int8=True)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def test_the_real_check_of_this_graph_unlocks_it(folder):
    export_check.require_checked(folder / export.CHECK_FILE, "int8", folder / export.INT8_FILE,
                                 folder / export.FP32_FILE)  # no error


def test_a_hand_written_equivalent_true_does_not_unlock_the_int8_graph(folder):
    _write_check(folder, {"variants": {"int8": {"equivalent": True}}})
    _refused(folder, r"check\.json: variants\.int8 records no sha256 of the graph it measured.*re-run dapt-export")


def test_equivalent_must_be_the_boolean_true(folder):
    for value in ("no", "yes", 1, None):
        document = _real_check()
        document["variants"]["int8"]["equivalent"] = value
        _write_check(folder, document)
        _refused(folder, rf"variants\.int8\.equivalent is {value!r}: expected true or false")
    document = _real_check()
    document["variants"]["int8"].update(equivalent=False, agreement=0.985, reason="label agreement 98.50% < 99.5%")
    _write_check(folder, document)
    _refused(folder, r"not equivalent to PyTorch \(label agreement 98\.50% < 99\.5% on 200 texts\)")
    document["variants"]["int8"]["equivalent"] = True  # true beside numbers below the bar: edited by hand
    _write_check(folder, document)
    _refused(folder, r"says the int8 graph is equivalent, but its label agreement 98\.50% is below the 99\.5% bar")


def test_a_graph_copied_from_another_export_is_refused_under_a_real_check(folder):
    (folder / export.INT8_FILE).write_bytes(b"int8 graph of export B")
    message = _refused(folder, r"model_int8\.onnx is not the graph .*check\.json measured")
    assert _sha256(INT8_BYTES)[:12] in message and _sha256(b"int8 graph of export B")[:12] in message


def test_an_int8_graph_and_check_copied_beside_another_fp32_graph_are_refused(folder):
    (folder / export.FP32_FILE).write_bytes(b"fp32 graph of export B")
    _refused(folder, r"model\.onnx is not the fp32 graph .*check\.json.* measured beside")


@pytest.mark.parametrize("text, match", [
    ("{\"variants\": {\"int8\": ", r"check\.json is not valid JSON \(.*line 1 column \d+\)"),
    ("[1, 2]", r"check\.json: expected an object with 'variants', got list"),
    ("{\"variants\": []}", r"check\.json: expected an object with 'variants', got .*'variants' a list"),
    ("{\"variants\": {\"int8\": \"equivalent\"}}", r"check\.json: variants\.int8 is a str, not an object"),
    ("{\"variants\": {\"int8\": {\"sha256\": \"00\", \"equivalent\": true}}}", r"variants\.int8\.sha256 is not a SHA-256"),
])
def test_a_malformed_check_file_is_a_one_line_error(folder, text, match):
    _write_check(folder, text)
    _refused(folder, match)


def test_a_check_without_an_int8_entry_says_the_graph_was_never_checked(folder):
    document = _real_check()
    del document["variants"]["int8"]
    _write_check(folder, document)
    _refused(folder, "never checked against PyTorch")
    (folder / export.CHECK_FILE).unlink()
    _refused(folder, "never checked against PyTorch")
