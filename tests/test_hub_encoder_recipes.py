"""The RoBERTa-base, DeBERTa-v3-base and ModernBERT-base recipes
(configs/{pretrain,classify}-{roberta,deberta-v3,modernbert}.yaml) end to end through their Hub code paths, against a loopback Hub (tests/hub_server.py) holding tiny
look-alikes laid out as the real repos are:

* ``FacebookAI/roberta-base``: a tiny random RobertaForMaskedLM (MLM head included) and a byte-level
  BPE tokenizer (tokenizer.json), trained at test time on IMDb text;
* ``microsoft/deberta-v3-base``: a tiny random DeBERTa-v3 encoder *without* MLM head (the real
  checkpoint is the ELECTRA-style discriminator) and only a SentencePiece ``spm.model`` plus
  ``tokenizer_config.json`` (no tokenizer.json), so loading converts it with sentencepiece + protobuf;
* ``answerdotai/ModernBERT-base``: a tiny random ModernBertForMaskedLM (MLM head included, local and
  global attention layers) and a byte-level BPE tokenizer.json with BERT's special tokens;
* ``stanfordnlp/imdb`` and ``stanfordnlp/sst2`` as in tests/test_hub_recipes.py.

Only the budgets are shrunk by overrides; every byte of model, tokenizer and data comes through
``huggingface_hub`` / ``datasets`` from the server.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest

from tests.encoder_matrix import BY_NAME, build_tiny_mlm, imdb_texts, tiny_config, train_tokenizer
from tests.hub_fixtures import patch_hub_client
from tests.hub_server import HubServer
from tests.test_hub_recipes import (ADMIN, ADMIN_TOKEN, IMDB_ID, classify_overrides, fetched, online_clients,
                                    pretrain_overrides, upload_review_datasets)

REPO = Path(__file__).resolve().parents[1]
RECIPES = {  # name: (Hub id, stage-1 recipe, stage-2 recipe, whether the checkpoint has an MLM head)
    "roberta": ("FacebookAI/roberta-base", "configs/pretrain-roberta.yaml", "configs/classify-roberta.yaml", True),
    "deberta-v3": ("microsoft/deberta-v3-base", "configs/pretrain-deberta-v3.yaml",
                   "configs/classify-deberta-v3.yaml", False),
    "modernbert": ("answerdotai/ModernBERT-base", "configs/pretrain-modernbert.yaml",
                   "configs/classify-modernbert.yaml", True),
}
LOADED_AS = {  # name: (model_type, tokenizer class, the tokenizer file fetched from the Hub)
    "roberta": ("roberta", "RobertaTokenizer", "tokenizer.json"),
    "deberta-v3": ("deberta-v2", "DebertaV2Tokenizer", "spm.model"),
    "modernbert": ("modernbert", "TokenizersBackend", "tokenizer.json"),
}


def tiny_roberta(directory: Path, texts: list[str]) -> Path:
    import torch
    from transformers import RobertaForMaskedLM

    tokenizer = train_tokenizer(BY_NAME["roberta"], texts)
    tokenizer.model_max_length = 512
    torch.manual_seed(0)
    config = tiny_config(BY_NAME["roberta"], tokenizer)
    config.max_position_embeddings = 514  # as roberta-base: 512 tokens + the padding offset
    RobertaForMaskedLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def tiny_modernbert(directory: Path, texts: list[str]) -> Path:
    return build_tiny_mlm(BY_NAME["modernbert"], directory, texts)


def tiny_deberta_v3(directory: Path, texts: list[str]) -> Path:
    """spm.model + tokenizer_config.json + a headless DebertaV2Model, as microsoft/deberta-v3-base."""
    import sentencepiece
    import torch
    from transformers import AutoTokenizer, DebertaV2Model

    directory.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(  # DeBERTa-v3's spm layout: [PAD] [CLS] [SEP] [UNK]
        sentence_iterator=iter(texts), model_writer=model, vocab_size=600, model_type="unigram",
        pad_id=0, pad_piece="[PAD]", bos_id=1, bos_piece="[CLS]", eos_id=2, eos_piece="[SEP]",
        unk_id=3, unk_piece="[UNK]", minloglevel=2, num_threads=1)
    (directory / "spm.model").write_bytes(model.getvalue())
    (directory / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False, "vocab_type": "spm"}))
    tokenizer = AutoTokenizer.from_pretrained(directory, config=tiny_config(BY_NAME["deberta-v3"], _Vocab(600)))
    config = tiny_config(BY_NAME["deberta-v3"], tokenizer)
    config.vocab_size = len(tokenizer) + 4  # [MASK] is an added token past the spm vocabulary, as in the real repo
    config.max_position_embeddings = 512
    torch.manual_seed(0)
    DebertaV2Model(config).save_pretrained(directory)
    assert not (directory / "tokenizer.json").exists()
    return directory


class _Vocab:
    """Enough of a tokenizer for tiny_config before the real one can be loaded."""

    def __init__(self, size):
        self.size = size

    def __len__(self):
        return self.size


@pytest.fixture(scope="module")
def encoder_hub(tmp_path_factory, shared_data):
    from huggingface_hub import HfApi

    pytest.importorskip("sentencepiece")
    root = tmp_path_factory.mktemp("encoder_hub")
    texts = imdb_texts(300)
    orgs = {"FacebookAI": [ADMIN], "microsoft": [ADMIN], "answerdotai": [ADMIN], "stanfordnlp": [ADMIN]}
    server = HubServer(tokens={ADMIN_TOKEN: ADMIN}, orgs=orgs).start()
    try:
        with pytest.MonkeyPatch.context() as mp:
            patch_hub_client(mp, server.endpoint, root / "uploader_hf_home")
            api = HfApi(endpoint=server.endpoint, token=ADMIN_TOKEN)
            for name, build in (("roberta", tiny_roberta), ("deberta-v3", tiny_deberta_v3), ("modernbert", tiny_modernbert)):
                api.create_repo(RECIPES[name][0])
                api.upload_folder(repo_id=RECIPES[name][0], folder_path=build(root / name, texts))
            upload_review_datasets(api, root, shared_data)
        yield server
    finally:
        server.shutdown()
    assert not server.errors, server.errors[-1]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RECIPES))
def test_encoder_recipe_runs_both_stages_from_the_hub(name, encoder_hub, tmp_path):
    from classify.config import ClassifyConfig
    from classify.model import load_classifier
    from classify.train import train_classifier
    from dapt.core.config import load_config
    from dapt.pretrain import PretrainConfig, pretrain

    hub_id, stage1_recipe, stage2_recipe, has_head = RECIPES[name]
    dapt_dir, classify_dir = tmp_path / "dapt", tmp_path / "classify"
    since = len(encoder_hub.requests)
    with online_clients(encoder_hub, tmp_path / "hf_home"):
        stage1 = load_config(PretrainConfig, REPO / stage1_recipe,
                             pretrain_overrides(dapt_dir) + ["train.head_warmup_steps=6", "train.lr=1e-3"])
        assert (stage1.model.name_or_path, stage1.impl.mixed_precision) == (hub_id, "no")  # bf16 in the file
        summary = pretrain(stage1)
        results = train_classifier(load_config(ClassifyConfig, REPO / stage2_recipe,
                                               classify_overrides(classify_dir, dapt_dir) + ["model.head_tokens=16"]))

    assert summary["model_name_or_path"] == hub_id and summary["had_mlm_head"] is has_head
    assert summary["baseline"] == ("pretrained_head" if has_head else "head_warmup")
    assert summary["steps"] == 12 and summary["perplexity_after"] < summary["perplexity_before"]
    files = fetched(encoder_hub, since, f"/{hub_id}")
    assert {"config.json", "model.safetensors"} <= files
    model_type, tokenizer_class, tokenizer_file = LOADED_AS[name]
    assert tokenizer_file in files
    for dataset in ("imdb_test", "sst2_validation"):
        assert math.isfinite(results["evaluation"][dataset]["accuracy"])
    classifier, tokenizer = load_classifier(classify_dir)
    assert classifier.encoder.config.model_type == model_type and type(tokenizer).__name__ == tokenizer_class


def test_encoder_recipes_keep_their_hub_ids_and_bf16():
    from classify.config import ClassifyConfig
    from dapt.core.config import load_config
    from dapt.pretrain import PretrainConfig

    for hub_id, stage1_recipe, stage2_recipe, has_head in RECIPES.values():
        stage1 = load_config(PretrainConfig, REPO / stage1_recipe, [])
        stage2 = load_config(ClassifyConfig, REPO / stage2_recipe, [])
        assert stage1.model.name_or_path == hub_id and stage1.data.sources[0].path == IMDB_ID
        assert stage1.impl.mixed_precision == stage2.impl.mixed_precision == "bf16"
        assert (stage1.train.head_warmup_steps > 0) is not has_head
        assert stage2.model.encoder == stage1.output_dir  # stage 2 reads stage 1's output
