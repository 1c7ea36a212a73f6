"""classify/model.py: the [CLS] classifier, its no-argument construction, encoding and inference."""

from __future__ import annotations

import atexit
import importlib.util
import json
import shutil
import sys
import uuid
from pathlib import Path

import pytest
import torch

from classify import model as M
from classify.encoder import from_encoder
from classify.release.publish import inline_text_rules
from classify.model import (
    DaptClassifierConfig,
    DistilBERTClassifier,
    clean_text,
    encode_reviews,
    infer_reviews,
    load_classifier,
    predict_proba,
    to_config_json,
)

MODEL_PY = Path(M.__file__)

# --------------------------------------------------------------------------------------------
# Shared helper: a tiny *trained* classifier saved as a stage-2 output directory (test data).
# --------------------------------------------------------------------------------------------

TOY_POSITIVE = [
    "great movie", "loved this film", "excellent acting", "wonderful story",
    "brilliant performance", "amazing film", "best movie ever", "beautiful music",
]
TOY_NEGATIVE = [
    "terrible movie", "awful acting", "boring story", "worst film",
    "hated this movie", "waste of time", "bad script", "poor performance",
]


_TRAINED: dict[tuple, Path] = {}


def train_toy_classifier(encoder_dir, *, seed: int = 0, steps: int = 25, lr: float = 2e-3, **settings):
    """from_encoder + a few Adam steps on 16 toy phrases, so the head is not a random init.

    Returns (classifier, tokenizer). Trained once per (encoder, seed, settings) and test session,
    then reloaded from disk, so every test module can have its own copy cheaply.
    """
    import tempfile

    from transformers import AutoTokenizer

    key = (str(encoder_dir), seed, steps, lr, tuple(sorted(settings.items())))
    if key in _TRAINED and (_TRAINED[key] / "model.safetensors").is_file():
        return load_classifier(_TRAINED[key])
    torch.manual_seed(seed)
    classifier = from_encoder(encoder_dir, **settings)
    tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    texts = TOY_POSITIVE + TOY_NEGATIVE
    labels = torch.tensor([1] * len(TOY_POSITIVE) + [0] * len(TOY_NEGATIVE))
    ids, mask = M.pad_batch(encode_reviews(tokenizer, texts, 64), tokenizer.pad_token_id)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=lr)
    classifier.train()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(classifier(ids, mask).logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    classifier.eval()
    cache = Path(tempfile.mkdtemp(prefix="dapt-toy-"))
    atexit.register(shutil.rmtree, cache, ignore_errors=True)
    _TRAINED[key] = classifier.save_pretrained(cache, tokenizer=tokenizer)
    return classifier, tokenizer


def fake_results(*, dapt: bool = False, base_model: str = "distilbert/distilbert-base-uncased",
                 truncation: str = "head", max_length: int = 64, head_tokens: int = 16) -> dict:
    """A results.json with the stage-2 schema; every number is made-up TEST DATA."""
    metrics = lambda acc, n: {  # noqa: E731
        "accuracy": acc, "f1": round(acc - 0.0123, 4), "precision": round(acc - 0.0311, 4),
        "recall": round(acc + 0.0207, 4), "roc_auc": round(acc + 0.0456, 4), "loss": 0.3141, "n": n,
    }
    return {
        "run_name": "unit-test-run",
        "created": "2025-01-02T03:04:05+00:00",
        "base_model": base_model,
        "dapt": None if not dapt else {
            "model_name_or_path": "distilbert/distilbert-base-uncased",
            "corpus": {"sources": ["imdb:train", "imdb:unsupervised"], "documents": 75000, "dropped_empty": 3,
                       "train_blocks": 41234, "heldout_blocks": 417},
            "block_size": 512, "had_mlm_head": True, "perplexity_before": 12.3456,
            "perplexity_before_random_head": None, "perplexity_after": 7.8912, "tokens_seen": 21_000_000,
            "steps": 2000, "epochs": 1.0, "wall_time_s": 1234.5, "mixed_precision": "bf16",
        },
        "hyperparameters": {
            "encoder_lr": 3e-5, "head_lr": 1e-3, "min_lr": 1e-6, "warmup_ratio": 0.06, "schedule": "linear",
            "epochs": 2, "batch_size": 8, "grad_accum": 1, "weight_decay": 0.01, "mixed_precision": "no",
            "max_length": max_length, "truncation": truncation, "head_tokens": head_tokens, "dropout": 0.1,
            "seed": 0, "num_processes": 1,
        },
        "training": {
            "epochs": [
                {"epoch": 1, "train_loss": 0.6931, "train_acc": 0.51, "val_loss": 0.6712, "val_acc": 0.58,
                 "val_f1": 0.57, "val_roc_auc": 0.61},
                {"epoch": 2, "train_loss": 0.4321, "train_acc": 0.83, "val_loss": 0.5123, "val_acc": 0.77,
                 "val_f1": 0.76, "val_roc_auc": 0.84},
            ],
            "best_epoch": 2, "best_metric": "val_acc", "best_value": 0.77, "stopped_early": False,
            "wall_time_s": 12.5,
        },
        "evaluation": {
            "imdb_test": {"dataset": "stanfordnlp/imdb", "split": "test", **metrics(0.8765, 25000)},
            "sst2_validation": {"dataset": "stanfordnlp/sst2", "split": "validation", **metrics(0.7654, 872)},
        },
    }


def make_run_dir(directory, encoder_dir, *, seed: int = 0, results: dict | None = None, **settings):
    """A stage-2 output dir: model/ (save_pretrained + tokenizer), results.json, plots/, metrics.jsonl.

    Returns (run_dir, classifier, tokenizer).
    """
    directory = Path(directory)
    settings.setdefault("max_length", 64)
    settings.setdefault("truncation", "head")
    settings.setdefault("head_tokens", 16)
    classifier, tokenizer = train_toy_classifier(encoder_dir, seed=seed, **settings)
    classifier.save_pretrained(directory / "model", tokenizer=tokenizer)
    results = results or fake_results(truncation=settings["truncation"], max_length=settings["max_length"],
                                      head_tokens=settings["head_tokens"])
    (directory / "results.json").write_text(json.dumps(results, indent=2))
    (directory / "plots").mkdir(exist_ok=True)
    (directory / "plots" / "imdb_test_roc.png").write_bytes(b"\x89PNG\r\n\x1a\n test image")
    (directory / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.69}) + "\n")
    return directory, classifier, tokenizer


def import_model_file(path: Path):
    """Import a model.py from ``path`` as a fresh module (its own lookup of config.json beside it)."""
    name = f"_model_under_test_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_headless_encoder_dir):
    classifier, tokenizer = train_toy_classifier(tiny_headless_encoder_dir, max_length=64)
    return classifier, tokenizer


# --------------------------------------------------------------------------------------------
# Architecture and [CLS] pooling
# --------------------------------------------------------------------------------------------


def test_structure_and_state_dict_keys(tiny):
    classifier, _ = tiny
    keys = list(classifier.state_dict())
    assert {k.split(".")[0] for k in keys} == {"encoder", "classifier"}
    assert "classifier.weight" in keys and "classifier.bias" in keys
    assert not any("pooler" in k for k in keys)  # add_pooling_layer=False
    assert tuple(classifier.classifier.weight.shape) == (2, classifier.encoder.config.hidden_size)
    assert isinstance(classifier.dropout, torch.nn.Dropout)
    assert classifier.encoder.config._attn_implementation == "sdpa"


def test_logits_are_the_head_on_position_zero(tiny):
    classifier, tokenizer = tiny
    ids, mask = M.pad_batch(encode_reviews(tokenizer, ["great movie", "a terrible awful boring film"]), 0)
    with torch.no_grad():
        logits = classifier(ids, mask).logits
        hidden = classifier.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        expected = classifier.classifier(hidden[:, 0])
        mean_pooled = classifier.classifier((hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True))
    assert logits.dtype == torch.float32 and tuple(logits.shape) == (2, 2)
    torch.testing.assert_close(logits, expected)
    assert not torch.allclose(logits, mean_pooled, atol=1e-4)


def test_masked_padding_does_not_change_logits(tiny):
    classifier, tokenizer = tiny
    ids, mask = M.pad_batch(encode_reviews(tokenizer, ["great movie", "a terrible awful boring film"]), 0)
    assert (mask[0] == 0).any()  # the short review is right-padded
    with torch.no_grad():
        base = classifier(ids, mask).logits
        garbage = ids.clone()
        garbage[mask == 0] = torch.randint(5, tokenizer.vocab_size, (int((mask == 0).sum()),))
        assert not torch.equal(garbage, ids)
        torch.testing.assert_close(classifier(garbage, mask).logits, base, atol=1e-5, rtol=0)
        # ...while a real (attended) token after position 0 does change them: the model attends.
        changed = ids.clone()
        changed[0, 1] = tokenizer.convert_tokens_to_ids("awful")
        assert not torch.allclose(classifier(changed, mask).logits[0], base[0], atol=1e-5)
        # Extra padding columns are masked out too.
        wider_ids = torch.cat([ids, torch.zeros_like(ids[:, :8])], 1)
        wider_mask = torch.cat([mask, torch.zeros_like(mask[:, :8])], 1)
        torch.testing.assert_close(classifier(wider_ids, wider_mask).logits, base, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------
# No-argument construction: embedded config > config.json beside the file > DistilBERT shape
# --------------------------------------------------------------------------------------------


def test_no_arg_construction_defaults_to_distilbert_shape(tmp_path):
    (tmp_path / "model.py").write_text(inline_text_rules(MODEL_PY.read_text()))  # as published, standing alone
    module = import_model_file(tmp_path / "model.py")
    classifier = module.DistilBERTClassifier()
    config = classifier.encoder.config
    assert config.model_type == "distilbert"
    assert (config.dim, config.n_layers, config.n_heads, config.vocab_size) == (768, 6, 12, 30522)
    assert tuple(classifier.classifier.weight.shape) == (2, 768)
    assert classifier.settings["max_length"] == 512 and classifier.settings["truncation"] == "head"


def test_no_arg_construction_from_config_json_beside_file(tmp_path, tiny):
    trained, _ = tiny
    (tmp_path / "model.py").write_text(inline_text_rules(MODEL_PY.read_text()))  # as published, standing alone
    (tmp_path / "config.json").write_text(json.dumps(to_config_json(trained.config)))
    module = import_model_file(tmp_path / "model.py")
    classifier = module.DistilBERTClassifier()
    assert classifier.encoder.config.model_type == "bert"
    assert classifier.encoder.config.hidden_size == trained.encoder.config.hidden_size
    classifier.load_state_dict(trained.state_dict(), strict=True)


def test_no_arg_construction_prefers_embedded_config(tmp_path, tiny):
    from classify.release.publish import embed_config

    trained, _ = tiny
    settings = dict(to_config_json(trained.config), truncation="head+tail", head_tokens=7, max_length=48)
    (tmp_path / "model.py").write_text(embed_config(inline_text_rules(MODEL_PY.read_text()), settings))
    # A conflicting config.json beside the file must lose against the embedded one.
    other = dict(settings, encoder_config=dict(settings["encoder_config"], hidden_size=64, intermediate_size=32))
    (tmp_path / "config.json").write_text(json.dumps(other))
    module = import_model_file(tmp_path / "model.py")
    classifier = module.DistilBERTClassifier()
    assert classifier.encoder.config.hidden_size == trained.encoder.config.hidden_size
    assert classifier.settings == {"max_length": 48, "truncation": "head+tail", "head_tokens": 7,
                                   "window_stride": 128, "id2label": {0: "Negative", 1: "Positive"}}
    classifier.load_state_dict(trained.state_dict(), strict=True)


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


def test_clean_text():
    assert clean_text("Great<br /><br />movie<BR/>  really<br>good <Br  />end\n\tnow ") == (
        "Great movie really good end now"
    )
    assert clean_text("no markup") == "no markup"


def _word_ids(tokenizer, words):
    ids = tokenizer.convert_tokens_to_ids(words)
    assert tokenizer.unk_token_id not in ids
    return ids


def test_head_tail_keeps_head_and_tail_exactly(tiny_tokenizer):
    vocab = ["movie", "film", "story", "plot", "actor", "scene", "cast", "music", "script", "ending"]
    words = [vocab[i % len(vocab)] for i in range(100)] + ["great", "terrible", "boring"]
    ids = _word_ids(tiny_tokenizer, words)
    cls, sep = tiny_tokenizer.cls_token_id, tiny_tokenizer.sep_token_id
    [encoded] = encode_reviews(tiny_tokenizer, [" ".join(words)], max_length=32, truncation="head+tail",
                               head_tokens=8)
    assert len(encoded) == 32
    assert encoded == [cls] + ids[:8] + ids[-22:] + [sep]
    assert encoded[-4:-1] == _word_ids(tiny_tokenizer, ["great", "terrible", "boring"])
    # head: the standard truncation of the tokenizer.
    [head] = encode_reviews(tiny_tokenizer, [" ".join(words)], max_length=32, truncation="head")
    assert head == [cls] + ids[:30] + [sep]
    assert head == tiny_tokenizer(" ".join(words), truncation=True, max_length=32)["input_ids"]
    # Short reviews are untouched by either strategy.
    for strategy in ("head", "head+tail"):
        [short] = encode_reviews(tiny_tokenizer, ["great movie"], max_length=32, truncation=strategy)
        assert short == tiny_tokenizer("great movie")["input_ids"]


def test_sun_et_al_split_at_512(tiny_tokenizer):
    words = ["movie"] * 200 + ["film"] * 400 + ["great"] * 10
    [encoded] = encode_reviews(tiny_tokenizer, [" ".join(words)], 512, "head+tail", 128)
    content = encoded[1:-1]
    movie, film, great = _word_ids(tiny_tokenizer, ["movie", "film", "great"])
    assert len(encoded) == 512
    assert content[:128] == [movie] * 128 and content[128:] == [film] * 372 + [great] * 10


def test_encode_cleans_markup_and_rejects_bad_strategy(tiny_tokenizer):
    assert encode_reviews(tiny_tokenizer, ["great<br />movie"]) == encode_reviews(tiny_tokenizer, ["great movie"])
    with pytest.raises(ValueError, match="truncation"):
        encode_reviews(tiny_tokenizer, ["a " * 600], truncation="middle")


# --------------------------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------------------------


def test_infer_single_and_batch_in_input_order(tiny):
    classifier, tokenizer = tiny
    label_class, label, confidence = infer_reviews("great movie", classifier, tokenizer)
    assert isinstance(label_class, int) and isinstance(confidence, float) and isinstance(label, str)
    assert label == {0: "Negative", 1: "Positive"}[label_class]
    assert 0.5 <= confidence <= 1.0
    reviews = [
        "terrible movie",
        "I loved this film! the acting was excellent and the story was wonderful, the best movie ever",
        "waste of time",
        "great",
        "boring story, bad script, poor performance and the worst ending",
        "amazing film",
        "awful",
    ]
    batch = infer_reviews(reviews, classifier, tokenizer, batch_size=3)
    one_by_one = [infer_reviews(r, classifier, tokenizer) for r in reviews]
    assert [b[:2] for b in batch] == [o[:2] for o in one_by_one]
    for b, o in zip(batch, one_by_one):
        assert b[2] == pytest.approx(o[2], abs=1e-5)
    # The toy training taught it the obvious ones (so order errors would show up as label swaps).
    assert [b[1] for b in batch] == ["Negative", "Positive", "Negative", "Positive", "Negative", "Positive",
                                     "Negative"]
    probabilities = predict_proba(reviews, classifier, tokenizer, batch_size=2)
    for p, (label_class, _, confidence) in zip(probabilities, batch):
        assert p == pytest.approx(confidence if label_class == 1 else 1 - confidence, abs=1e-5)
    single = predict_proba("great movie", classifier, tokenizer)
    assert isinstance(single, float)
    assert single == pytest.approx(predict_proba(["great movie"], classifier, tokenizer)[0], abs=1e-6)


@pytest.mark.parametrize(
    ("bad", "pattern"),
    [(None, "NoneType"), (5, "int"), (["fine", 3, "ok"], r"reviews\[1\].*int"), (["ok", None], r"reviews\[1\].*None"),
     ([b"bytes"], r"reviews\[0\].*bytes")],
)
def test_infer_rejects_non_strings(tiny, bad, pattern):
    classifier, tokenizer = tiny
    with pytest.raises(TypeError, match=pattern):
        infer_reviews(bad, classifier, tokenizer)
    with pytest.raises(TypeError, match=pattern):
        predict_proba(bad, classifier, tokenizer)


def test_infer_empty_list_and_very_long_review(tiny):
    classifier, tokenizer = tiny
    assert infer_reviews([], classifier, tokenizer) == []
    assert predict_proba([], classifier, tokenizer) == []
    long_review = "great movie " * 5000
    for strategy in ("head", "head+tail"):
        label_class, label, confidence = infer_reviews(long_review, classifier, tokenizer, truncation=strategy,
                                                       max_length=10_000)
        assert label_class in (0, 1) and 0.5 <= confidence <= 1.0
    # max_length from the classifier's stored settings: the same as passing it explicitly.
    assert infer_reviews(long_review, classifier, tokenizer) == infer_reviews(long_review, classifier, tokenizer,
                                                                              max_length=64, truncation="head")


# --------------------------------------------------------------------------------------------
# Persistence and the Hugging Face classes
# --------------------------------------------------------------------------------------------


def test_save_pretrained_and_load_classifier(tmp_path, tiny):
    from safetensors import safe_open

    classifier, tokenizer = tiny
    classifier.save_pretrained(tmp_path / "model", tokenizer=tokenizer)
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert not list((tmp_path / "model").glob("*.bin"))
    with safe_open(str(tmp_path / "model" / "model.safetensors"), "pt") as handle:
        assert set(handle.keys()) == set(classifier.state_dict())
        assert handle.metadata() == {"format": "pt"}
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["model_type"] == "dapt-encoder-classifier"
    assert config["encoder_config"]["model_type"] == "bert"
    assert config["id2label"] == {"0": "Negative", "1": "Positive"}
    assert "auto_map" not in config  # added by dapt-publish together with model.py

    texts = ["great movie", "terrible film", "the story was boring"]
    expected = predict_proba(texts, classifier, tokenizer)
    for where in (tmp_path / "model", tmp_path):  # the model folder, or the run dir holding model/
        loaded, loaded_tokenizer = load_classifier(where)
        assert not loaded.training
        assert predict_proba(texts, loaded, loaded_tokenizer) == pytest.approx(expected, abs=1e-6)
    with pytest.raises(OSError, match="does-not-exist"):
        load_classifier(tmp_path / "does-not-exist")


def test_one_class_for_the_snippet_from_pretrained_and_auto(tmp_path, tiny):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    classifier, tokenizer = tiny
    classifier.save_pretrained(tmp_path, tokenizer=tokenizer)
    ids, mask = M.pad_batch(encode_reviews(tokenizer, ["great movie", "awful film"]), 0)
    with torch.no_grad():
        expected = classifier(ids, mask).logits
        # the seed's way: build from a config, load the state dict
        rebuilt = DistilBERTClassifier(DaptClassifierConfig.from_json_file(str(tmp_path / "config.json"))).eval()
        rebuilt.load_state_dict(classifier.state_dict(), strict=True)
        torch.testing.assert_close(rebuilt(ids, mask).logits, expected)
        # from_pretrained on the saved folder, and the Auto classes once the types are registered
        reloaded = DistilBERTClassifier.from_pretrained(tmp_path).eval()
        out = reloaded(input_ids=ids, attention_mask=mask, labels=torch.tensor([1, 0]))
        torch.testing.assert_close(out.logits, expected)
        assert out.loss is not None and out.loss.ndim == 0
        AutoConfig.register(M.MODEL_TYPE, DaptClassifierConfig, exist_ok=True)
        AutoModelForSequenceClassification.register(DaptClassifierConfig, DistilBERTClassifier, exist_ok=True)
        auto = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
        assert type(auto) is DistilBERTClassifier
        torch.testing.assert_close(auto(input_ids=ids, attention_mask=mask).logits, expected)
    assert reloaded.config.id2label == {0: "Negative", 1: "Positive"}


def test_from_encoder_loads_pretrained_weights(tiny_encoder_dir, caplog, capfd):
    import logging

    from transformers import BertModel

    capfd.readouterr()
    with caplog.at_level(logging.INFO, logger="classify.encoder"):
        classifier = from_encoder(tiny_encoder_dir, dropout=0.2, truncation="head+tail")
    # a stage-1 output: its MLM head is left out, said in one line, without transformers' key table
    assert "encoder loaded without the checkpoint's cls (" in caplog.text
    assert "LOAD REPORT" not in capfd.readouterr().err
    reference = BertModel.from_pretrained(tiny_encoder_dir, add_pooling_layer=False)
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(classifier.encoder.state_dict()[name], tensor)
    assert classifier.dropout.p == 0.2
    assert classifier.settings["truncation"] == "head+tail"
    assert classifier.config.base_model == str(tiny_encoder_dir)
    assert next(classifier.parameters()).dtype == torch.float32


def test_from_encoder_standin_minilm_drops_pooler(standin_encoder_dir):
    classifier = from_encoder(standin_encoder_dir)
    assert classifier.encoder.config.hidden_size == 384
    assert not any("pooler" in k for k in classifier.state_dict())
    assert tuple(classifier.classifier.weight.shape) == (2, 384)


def test_infer_names_a_lone_surrogate(tiny):
    classifier, tokenizer = tiny
    with pytest.raises(ValueError, match=r"reviews\[2\] is not valid text: '\\udcff' at character 4 is a lone surrogate"):
        infer_reviews(["ok", "fine", "bad \udcff"], classifier, tokenizer)


# --------------------------------------------------------------------------------------------
# Calibration temperature, sliding windows, token-budget batches (issue 15)
# --------------------------------------------------------------------------------------------


def test_temperature_divides_the_logits_of_every_path(tmp_path, tiny):
    classifier, tokenizer = tiny
    texts = ["great movie", "awful film", "the story was boring"]
    ids, mask = M.pad_batch(encode_reviews(tokenizer, texts, 64), tokenizer.pad_token_id)
    with torch.no_grad():
        raw = classifier(ids, mask).logits
    scaled = copy_of(classifier, tmp_path / "scaled")
    scaled.config.temperature = 2.5
    with torch.no_grad():
        torch.testing.assert_close(scaled(ids, mask).logits, raw / 2.5)
    assert predict_proba(texts, scaled, tokenizer) == pytest.approx(torch.softmax(raw / 2.5, -1)[:, 1].tolist(), abs=1e-6)
    [(label, _, confidence)] = infer_reviews(texts[:1], scaled, tokenizer)
    assert confidence == pytest.approx(float(torch.softmax(raw[0] / 2.5, -1)[label]), abs=1e-6)
    # saved in config.json and back; a folder written before temperatures existed loads with 1.0
    scaled.save_pretrained(tmp_path / "saved", tokenizer=tokenizer)
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["temperature"] == 2.5
    assert load_classifier(tmp_path / "saved")[0].config.temperature == 2.5
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    del config["temperature"], config["window_stride"]
    (tmp_path / "saved" / "config.json").write_text(json.dumps(config))
    old, _ = load_classifier(tmp_path / "saved")
    assert (old.config.temperature, old.config.window_stride) == (1.0, min(128, old.config.max_length // 4))
    assert predict_proba(texts, old, tokenizer) == pytest.approx(predict_proba(texts, classifier, tokenizer), abs=1e-6)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got 0"):
        DaptClassifierConfig(temperature=0)


def copy_of(classifier, folder):
    classifier.save_pretrained(folder)
    return DistilBERTClassifier.from_pretrained(folder).eval()


@pytest.mark.parametrize(("max_length", "stride"), [(16, 4), (16, 0), (24, 13), (40, 8)])
def test_encode_windows_are_the_tokenizers_overflowing_windows(tiny_tokenizer, max_length, stride):
    words = ["movie", "film", "story", "plot", "actor", "scene", "cast"] * 11
    text = " ".join(words)
    [windows] = M.encode_windows(tiny_tokenizer, [text], max_length, stride)
    expected = tiny_tokenizer(text, truncation=True, max_length=max_length, stride=stride,
                              return_overflowing_tokens=True)["input_ids"]
    assert windows == expected and len(windows) > 1
    assert all(len(w) <= max_length for w in windows)
    content = [w[1:-1] for w in windows]
    if stride:
        assert all(a[len(a) - stride:] == b[:stride] for a, b in zip(content, content[1:]))
    assert [t for t in content[0]] + [t for c in content[1:] for t in c[stride:]] == _word_ids(tiny_tokenizer, words)
    # a text that fits is one window, the same sequence encode_reviews gives
    assert M.encode_windows(tiny_tokenizer, ["great movie"], max_length, stride) == [
        encode_reviews(tiny_tokenizer, ["great movie"], max_length)]
    assert encode_reviews(tiny_tokenizer, [text], max_length, "windows") == [windows[0]]  # training reads the first
    with pytest.raises(ValueError, match=f"window_stride={max_length - 2} must be"):
        M.encode_windows(tiny_tokenizer, [text], max_length, max_length - 2)


def test_windows_logits_are_the_mean_of_the_windows(tiny):
    classifier, tokenizer = tiny
    review = "great movie, loved it. " * 20 + "but a boring story and the worst ending " * 12
    [windows] = M.encode_windows(tokenizer, [review], 32, 8)
    assert len(windows) > 3
    with torch.no_grad():
        per_window = torch.cat([classifier(torch.tensor([w])).logits for w in windows])
    expected = torch.softmax(per_window.mean(0), -1)
    got = predict_proba([review, "great movie"], classifier, tokenizer, max_length=32, truncation="windows",
                        window_stride=8, batch_tokens=64)
    assert got[0] == pytest.approx(float(expected[1]), abs=1e-5)
    assert got[1] == pytest.approx(predict_proba("great movie", classifier, tokenizer), abs=1e-5)
    # selectable at inference time: each mode gives its own answer for the long review
    windowed = copy_of(classifier, Path(tempfile_dir()) / "windowed")
    windowed.config.head_tokens = 8
    modes = {mode: predict_proba(review, windowed, tokenizer, max_length=32, truncation=mode, window_stride=8)
             for mode in ("head", "head+tail", "windows")}
    assert len({round(p, 6) for p in modes.values()}) == 3
    assert modes["windows"] == pytest.approx(got[0], abs=1e-6)
    # the model's own setting is the default
    windowed.config.update({"truncation": "windows", "max_length": 32, "window_stride": 8})
    assert predict_proba(review, windowed, tokenizer) == pytest.approx(modes["windows"], abs=1e-6)


def tempfile_dir() -> str:
    import tempfile

    folder = tempfile.mkdtemp(prefix="dapt-test-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def test_token_budget_batches_cover_every_review_once_within_the_budget():
    lengths = [5, 300, 17, 512, 64, 64, 1, 250, 33, 130]
    batches = M.token_budget_batches(lengths, batch_tokens=1024)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    widths = [-(-max(lengths[i] for i in b) // 8) * 8 for b in batches]
    assert all(len(b) * w <= 1024 or len(b) == 1 for b, w in zip(batches, widths))
    assert [lengths[b[0]] for b in batches] == sorted((lengths[b[0]] for b in batches), reverse=True)
    assert all(len(b) <= 2 for b in M.token_budget_batches(lengths, None, batch_size=2))
    assert M.token_budget_batches([700], batch_tokens=64) == [[0]]  # a review longer than the budget runs alone


def test_infer_results_do_not_depend_on_the_batching(tiny):
    classifier, tokenizer = tiny
    reviews = ["great movie", "terrible " * 40, "I loved this film! " * 9, "waste of time", "ok"]
    reference = predict_proba(reviews, classifier, tokenizer, batch_tokens=None, batch_size=1)
    for kwargs in ({}, {"batch_tokens": 64}, {"batch_tokens": None, "batch_size": 2}, {"batch_size": 3}):
        assert predict_proba(reviews, classifier, tokenizer, **kwargs) == pytest.approx(reference, abs=1e-5)


def test_token_budget_batches_pad_less_than_count_batches_on_imdb(shared_data, standin_encoder_dir):
    """Real IMDb test lengths (WordPiece, cut at 512): the default token budget wastes less padding
    than batches of 32 in input order (what a DataLoader gives) and than sorted batches of 32."""
    import numpy as np
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    texts = pq.read_table(shared_data / "imdb" / "test.parquet", columns=["text"]).column("text").to_pylist()
    pick = np.random.default_rng(0).choice(len(texts), 1000, replace=False)
    tokenizer = AutoTokenizer.from_pretrained(standin_encoder_dir)
    lengths = [len(ids) for ids in encode_reviews(tokenizer, [texts[i] for i in pick], 512)]

    def padding(batches):
        padded = sum(len(b) * -(-max(lengths[i] for i in b) // 8) * 8 for b in batches)
        return 1 - sum(lengths) / padded

    in_order = [list(range(i, min(i + 32, len(lengths)))) for i in range(0, len(lengths), 32)]
    budget = padding(M.token_budget_batches(lengths))
    assert budget < padding(M.token_budget_batches(lengths, None, batch_size=32)) < padding(in_order)
    assert budget < 0.05 and padding(in_order) > 0.3
