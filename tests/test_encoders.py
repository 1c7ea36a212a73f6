"""The support matrix: every architecture of tests/encoder_matrix.py through the whole pipeline.

Per architecture (tiny random model, tokenizer trained offline on IMDb text): the masked-only MLM
loss and gradients equal the model's own full-logit ones; blocks carry the tokenizer's own special
tokens and whole-word masking its word boundaries; then stage 1 (held-out perplexity falls), stage 2,
``dapt-publish --dry-run``, the published model.py through ``pipeline(..., trust_remote_code=True)``,
and DESIGN.md's user snippet against the loopback Hub. Adding an architecture is one line in
tests/encoder_matrix.py.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from dapt.modeling import MaskedLMObjective
from tests.encoder_matrix import ARCHITECTURES, BY_NAME, imdb_texts, tiny_config, train_tokenizer

IDS = [arch.name for arch in ARCHITECTURES]


@pytest.fixture(scope="module")
def texts(shared_data):
    return imdb_texts(300)


@pytest.fixture(scope="module")
def tokenizers(texts):
    return {arch.name: train_tokenizer(arch, texts) for arch in ARCHITECTURES}


def masked_batch(tokenizer, texts, rows=3, length=40, seed=0):
    """Real text, one padded row, ~25 % of the tokens selected as labels."""
    ids = [tokenizer(t, truncation=True, max_length=length)["input_ids"] for t in texts[:rows]]
    ids[-1] = ids[-1][: length - 9]
    input_ids = torch.full((rows, length), tokenizer.pad_token_id)
    attention_mask = torch.zeros_like(input_ids)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        attention_mask[row, : len(seq)] = 1
    chosen = torch.rand(input_ids.shape, generator=torch.Generator().manual_seed(seed)) < 0.25
    labels = torch.where(chosen & attention_mask.bool(), input_ids, torch.full_like(input_ids, -100))
    return input_ids, attention_mask, labels


def without_dropout(model):
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=IDS)
def test_masked_only_loss_and_gradients_equal_the_models_own(arch, tokenizers, texts):
    from transformers import AutoModelForMaskedLM

    tokenizer = tokenizers[arch.name]
    torch.manual_seed(0)
    model = without_dropout(AutoModelForMaskedLM.from_config(tiny_config(arch, tokenizer), attn_implementation="eager"))
    reference = copy.deepcopy(model)
    input_ids, attention_mask, labels = masked_batch(tokenizer, texts)
    objective = MaskedLMObjective(model)
    assert objective.strategy in ("native", "gather") and objective.masked_only  # never the full-logit fallback

    expected = reference(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    losses, example = objective(input_ids, attention_mask, labels)
    assert len(losses) == int((labels != -100).sum()) and example.tolist() == sorted(example.tolist())
    assert losses.mean().item() == pytest.approx(expected.item(), abs=1e-5)
    expected.backward()
    losses.mean().backward()
    for (name, ours), theirs in zip(model.named_parameters(), reference.parameters()):
        assert (ours.grad is None) == (theirs.grad is None), name
        if ours.grad is not None:
            torch.testing.assert_close(ours.grad, theirs.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_a_head_that_mixes_positions_falls_back_to_full_logits(tokenizers, texts, caplog):
    """An MLM model whose head is not per-position cannot be split: the probe sees it, one log
    line says so, and the loss is still the model's own."""
    from transformers import BertForMaskedLM

    class MixingHead(BertForMaskedLM):
        def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask)[0]
            logits = self.cls(hidden + hidden.mean(dim=1, keepdim=True))
            loss = None if labels is None else torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
            return type("Out", (), {"logits": logits, "loss": loss})()

    tokenizer = tokenizers["bert"]
    torch.manual_seed(0)
    model = MixingHead(tiny_config(BY_NAME["bert"], tokenizer)).eval()
    input_ids, attention_mask, labels = masked_batch(tokenizer, texts)
    with caplog.at_level(logging.WARNING, logger="dapt.modeling"):
        objective = MaskedLMObjective(model)
    assert objective.strategy == "full" and not objective.masked_only
    assert [r.message for r in caplog.records if "masked-only MLM logits unavailable" in r.message] != []
    assert len(caplog.records) == 1
    assert model.bert._forward_hooks == {}  # the probe's hook is gone
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        assert objective(input_ids, attention_mask, labels)[0].mean().item() == pytest.approx(expected.item(), abs=1e-5)


def test_head_warm_up_trains_the_head_only_with_either_logit_path(tokenizers, texts):
    """``freeze_encoder``: no gradient reaches the encoder (nor a tied decoder), the head gets one."""
    from transformers import AutoModelForMaskedLM

    tokenizer = tokenizers["roberta"]
    input_ids, attention_mask, labels = masked_batch(tokenizer, texts)
    for masked_only in (True, False):
        torch.manual_seed(0)
        model = AutoModelForMaskedLM.from_config(tiny_config(BY_NAME["roberta"], tokenizer))
        objective = MaskedLMObjective(model, masked_only=masked_only)
        objective(input_ids, attention_mask, labels, freeze_encoder=True)[0].mean().backward()
        assert all(p.grad is None for p in model.base_model.parameters())
        assert all(p.requires_grad for p in model.parameters())  # restored afterwards
        assert model.lm_head.dense.weight.grad is not None


@pytest.fixture(scope="module")
def saved_models(tokenizers, tmp_path_factory):
    """Each architecture's tiny random MLM model and tokenizer, saved once (stage 1's input)."""
    from transformers import AutoModelForMaskedLM

    root = tmp_path_factory.mktemp("encoders")
    folders = {}
    for arch in ARCHITECTURES:
        torch.manual_seed(0)
        model = AutoModelForMaskedLM.from_config(tiny_config(arch, tokenizers[arch.name]), attn_implementation="eager")
        folders[arch.name] = root / arch.name
        model.save_pretrained(folders[arch.name])
        tokenizers[arch.name].save_pretrained(folders[arch.name])
    return folders


@pytest.mark.parametrize("requested, expected", [("sdpa", "eager"), ("flash_attention_2", "eager")])
def test_unsupported_attention_falls_back_with_one_log_line(saved_models, requested, expected, caplog):
    """DeBERTa-v2/v3 have no SDPA (nor flash attention here): stage 1 loads the best supported one."""
    from dapt.modeling import load_masked_lm

    with caplog.at_level(logging.INFO, logger="dapt.modeling"):
        model, _, had_head = load_masked_lm(str(saved_models["deberta-v3"]), requested)
    assert model.config._attn_implementation == expected and had_head
    lines = [r.message for r in caplog.records if "attn_implementation" in r.message]
    assert len(lines) == 1 and f"attn_implementation={requested} is not supported" in lines[0]
    assert lines[0].endswith(f"using {expected}")


def test_supported_attention_is_kept_silently(saved_models, caplog):
    from dapt.modeling import load_masked_lm

    with caplog.at_level(logging.INFO, logger="dapt.modeling"):
        model, _, _ = load_masked_lm(str(saved_models["roberta"]), "sdpa")
    assert model.config._attn_implementation == "sdpa"
    assert not [r for r in caplog.records if "attn_implementation" in r.message]


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=IDS)
def test_stage1_output_reloads_with_the_head_it_trained(arch, tokenizers, tmp_path):
    """A headless encoder gets a fresh MLM head in stage 1; what stage 1 saves (save_pretrained of
    the MLM model, tied decoder included) loads back as a model with that head - the same weights,
    the same logits - so a second phase (DAPT then TAPT) continues with it."""
    from transformers import AutoModel

    from dapt.modeling import head_parameters, load_masked_lm

    tokenizer = tokenizers[arch.name]
    torch.manual_seed(0)
    AutoModel.from_config(tiny_config(arch, tokenizer)).save_pretrained(tmp_path / "headless")
    tokenizer.save_pretrained(tmp_path / "headless")
    first, _, had_head = load_masked_lm(str(tmp_path / "headless"), "eager")
    assert not had_head
    with torch.no_grad():  # a trained head, not the initialisation a fresh load would draw again
        for parameter in head_parameters(first):
            parameter.add_(0.01)
    first.save_pretrained(tmp_path / "phase1")
    tokenizer.save_pretrained(tmp_path / "phase1")
    second, _, had_head = load_masked_lm(str(tmp_path / "phase1"), "eager")
    assert had_head and second.config.architectures == [type(first).__name__]
    before, after = first.state_dict(), second.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    input_ids = torch.arange(24).reshape(2, 12) % len(tokenizer)
    first.eval(), second.eval()
    with torch.no_grad():
        assert torch.allclose(first(input_ids=input_ids).logits, second(input_ids=input_ids).logits, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Packing and whole-word masking with each tokenizer


EXPECTED_LAYOUT = {  # (first, last) token of a packed block, as the real checkpoints' tokenizers lay out one text
    "RobertaTokenizer": ("<s>", "</s>"), "XLMRobertaTokenizer": ("<s>", "</s>"),
}


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=IDS)
def test_blocks_use_the_tokenizers_own_special_layout(arch, tokenizers, texts):
    import datasets

    from dapt.data import pack_blocks

    tokenizer = tokenizers[arch.name]
    blocks = pack_blocks(datasets.Dataset.from_dict({"text": texts[:20]}), tokenizer, 48)
    first, last = EXPECTED_LAYOUT.get(arch.tokenizer, ("[CLS]", "[SEP]"))
    one_text = tokenizer.convert_ids_to_tokens(tokenizer("a film")["input_ids"])
    assert (one_text[0], one_text[-1]) == (first, last)
    for ids in blocks["input_ids"]:
        tokens = tokenizer.convert_ids_to_tokens(ids)
        assert len(ids) == 48 and tokens[0] == first and tokens[-1] == last
        assert first not in tokens[1:-1]  # documents are joined by the separator only
    joined = sum((ids[1:-1] for ids in blocks["input_ids"]), [])
    assert joined.count(tokenizer.convert_tokens_to_ids(last)) >= 2  # document ends inside the stream


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=IDS)
def test_whole_word_masking_uses_the_tokenizers_word_boundaries(arch, tokenizers, texts):
    """Every piece of a selected word is masked, with no ``##`` convention: the word ids of the
    tokenizer's own pre-tokenization (WordPiece, byte-level BPE, SentencePiece)."""
    import datasets

    from dapt.data import pack_blocks
    from dapt.masking import MLMCollator

    tokenizer = tokenizers[arch.name]
    blocks = pack_blocks(datasets.Dataset.from_dict({"text": texts[:12]}), tokenizer, 64, with_word_ids=True)
    batch = MLMCollator(tokenizer, whole_word_mask=True, mlm_probability=0.3, seed=0)(list(blocks))
    masked = batch["labels"] != -100
    assert 0.15 < masked.float().mean() < 0.5
    split_words = 0
    for row, words in enumerate(blocks["word_ids"]):
        words = torch.tensor(words)
        assert (words[torch.isin(torch.tensor(blocks["input_ids"][row]), torch.tensor(tokenizer.all_special_ids))] == -1).all()
        for word in words.unique():
            if word < 0:
                continue
            pieces = masked[row, : len(words)][words == word]
            assert pieces.all() or not pieces.any(), (row, int(word))
            split_words += len(pieces) > 1
    assert split_words > 20  # words of several pieces were there to test
    assert (batch["input_ids"][masked] == tokenizer.mask_token_id).all()


# --------------------------------------------------------------------------------------------
# The pipeline per architecture: stage 1 -> stage 2 -> publish (dry run) -> use


REVIEWS = ["great movie", "terrible film, a waste of time", "I loved this film!", "Terrible."]


@pytest.fixture(scope="module")
def corpus(texts, tmp_path_factory):
    """Stage 1's corpus: IMDb reviews as a parquet file in a temp folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path_factory.mktemp("corpus") / "reviews.parquet"
    pq.write_table(pa.table({"text": texts[:100]}), path)
    return path


@pytest.fixture(scope="module")
def pipeline_run(saved_models, corpus, shared_data, tmp_path_factory):
    """``run(name) -> (stage-1 summary, stage-2 results, published folder)``, each architecture run once."""
    from classify.release import publish
    from classify.config import ClassifyConfig
    from classify.train import train_classifier
    from dapt.core.config import load_config
    from dapt.pretrain import PretrainConfig, pretrain

    done = {}

    def run(name: str):
        if name not in done:
            root = tmp_path_factory.mktemp(f"pipeline-{name}")
            summary = pretrain(load_config(PretrainConfig, None, [
                f"output_dir={root / 'dapt'}", f"model.name_or_path={saved_models[name]}",
                f"data.sources=[{{path: {corpus}}}]", "data.heldout=10", "data.block_size=64",
                "train.batch_size=8", "train.eval_batch_size=32", "train.max_steps=10", "train.lr=2e-3",
                "train.warmup_steps=2", "train.log_every=5", "train.eval_every=0",
                "impl.mixed_precision=no", "impl.dataloader_workers=0"]))  # attention: the default, sdpa
            results = train_classifier(load_config(ClassifyConfig, None, [
                f"output_dir={root / 'classify'}", f"model.encoder={root / 'dapt'}", "model.max_length=64",
                f"data.train.path={shared_data}/imdb", "data.train.max_samples=32", "data.validation_size=8",
                f"data.eval.imdb_test.path={shared_data}/imdb", "data.eval.imdb_test.max_samples=16",
                f"data.eval.sst2_validation.path={shared_data}/sst2", "data.eval.sst2_validation.max_samples=16",
                "data.bucket_batches=2", "train.epochs=1", "train.batch_size=8", "train.eval_batch_size=16",
                "train.encoder_lr=1e-3", "train.head_lr=5e-3", "impl.mixed_precision=no", "impl.dataloader_workers=0",
                "checkpoint.every_epoch=false"]))
            folder = root / "hub"
            assert publish.main([str(root / "classify"), "--repo-id", f"alice/{name}", "--folder", str(folder),
                                 "--dry-run"]) == 0
            done[name] = summary, results, folder
        return done[name]

    return run


@pytest.mark.slow  # the three share one pipeline run per architecture (~10 s of CPU each)
@pytest.mark.parametrize("arch", ARCHITECTURES, ids=IDS)
def test_stage1_lowers_heldout_perplexity(arch, pipeline_run):
    summary, _, _ = pipeline_run(arch.name)
    assert summary["had_mlm_head"] and summary["steps"] == 10
    assert summary["perplexity_after"] < summary["perplexity_before"]


@pytest.mark.slow  # the three share one pipeline run per architecture (~10 s of CPU each)
@pytest.mark.parametrize("arch", ARCHITECTURES, ids=IDS)
def test_stage2_trains_and_evaluates(arch, pipeline_run):
    import math

    _, results, _ = pipeline_run(arch.name)
    assert results["training"]["epochs"][0]["train_loss"] > 0
    for name in ("imdb_test", "sst2_validation"):
        assert all(math.isfinite(results["evaluation"][name][m]) for m in ("accuracy", "roc_auc", "loss"))


@pytest.mark.slow  # the three share one pipeline run per architecture (~10 s of CPU each)
@pytest.mark.parametrize("arch", ARCHITECTURES, ids=IDS)
def test_published_folder_rebuilds_the_encoder_and_pipeline_agrees(arch, pipeline_run):
    """model.py rebuilds this architecture offline from its embedded config; infer_reviews,
    AutoModelForSequenceClassification and pipeline() give the same probabilities."""
    from transformers import pipeline

    from classify.model import load_classifier, predict_proba

    _, _, folder = pipeline_run(arch.name)
    classifier, tokenizer = load_classifier(folder)
    assert classifier.encoder.config.model_type in (arch.model_type, arch.model_type.replace("-", "_"))
    expected = predict_proba(REVIEWS, classifier, tokenizer)
    classify = pipeline("text-classification", model=str(folder), trust_remote_code=True)
    for scores, p in zip(classify(REVIEWS, truncation=True, top_k=None), expected):
        assert {s["label"]: s["score"] for s in scores}["Positive"] == pytest.approx(p, abs=1e-5)


@pytest.mark.slow
def test_user_snippet_from_the_hub_for_every_architecture(pipeline_run, hub_env, tmp_path):
    """DESIGN.md's snippet, verbatim, in a fresh interpreter that cannot import this repository,
    against each architecture's repo pushed to the loopback Hub (one process for all of them)."""
    import json
    import subprocess
    import sys
    import textwrap

    from classify.release import publish
    from classify.model import infer_reviews, load_classifier
    from tests.test_hub_roundtrip import user_script

    hub_env.login("alice")
    api = hub_env.api("alice")
    repos = {}
    for arch in ARCHITECTURES:
        _, _, folder = pipeline_run(arch.name)
        repos[arch.name] = hub_env.hub.new_repo_id("alice", arch.name)
        api.create_repo(repos[arch.name])
        api.upload_folder(repo_id=repos[arch.name], folder_path=folder)
        assert set(publish.list_folder(folder)) and "model.py" in api.list_repo_files(repos[arch.name])
    hub_env.logout()
    script = textwrap.dedent("""
        import importlib, os, sys
        for name, repo_id in REPOS.items():
            os.makedirs(name); os.chdir(name)
            sys.modules.pop("model", None)  # each repo's own model.py, downloaded into "."
            importlib.invalidate_caches()
            print("\\nARCH", name)
            exec(compile(SNIPPET.replace("REPO_ID = ", "REPO_ID = " + repr(repo_id) + "  # ", 1), name, "exec"), {})
            os.chdir("..")
    """)
    script = f"REPOS = {repos!r}\nSNIPPET = {user_script('REPO_ID')!r}\n" + script
    env = hub_env.subprocess_env()
    env.pop("PYTHONPATH", None)
    env["TOKENIZERS_PARALLELISM"] = "false"
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    outputs = {}
    for chunk in done.stdout.split("\nARCH ")[1:]:
        name, rest = chunk.split("\n", 1)
        outputs[name] = json.loads(rest.split("\nRESULT ")[-1].splitlines()[0])
    assert set(outputs) == set(repos)
    for name, out in outputs.items():
        classifier, tokenizer = load_classifier(pipeline_run(name)[2])
        one = infer_reviews("Great movie", classifier, tokenizer)
        assert out["one"][:2] == list(one[:2]) and out["one"][2] == pytest.approx(one[2], abs=1e-5), name
        many = infer_reviews(["I loved this film!", "Terrible."], classifier, tokenizer)
        assert [r[2] for r in out["many"]] == pytest.approx([r[2] for r in many], abs=1e-5), name
