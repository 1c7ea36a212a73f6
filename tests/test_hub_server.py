"""The local Hub server (tests/hub_server.py) driven by the real huggingface_hub / transformers clients."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import huggingface_hub
from huggingface_hub import HfApi, hf_hub_download, snapshot_download, try_to_load_from_cache
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import _CACHED_NO_EXIST, get_hf_file_metadata, hf_hub_url

from tests.hub_fixtures import hub_env, hub_server  # noqa: F401  (fixtures; conftest may import them too)

SHA1 = re.compile(r"[0-9a-f]{40}")
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _server_did_not_crash(hub_server):
    yield
    assert not hub_server.server.errors, hub_server.server.errors[-1]


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def write_files(folder: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def make_repo(hub_env, tmp_path, files: dict[str, bytes], *, user="alice", private=False) -> tuple[str, str]:
    """Create a repo on the server and upload ``files`` in one commit; returns (repo_id, commit sha)."""
    api = hub_env.api(user)
    repo_id = hub_env.hub.new_repo_id(user)
    api.create_repo(repo_id, private=private)
    folder = write_files(tmp_path / f"upload-{repo_id.split('/')[1]}", files)
    return repo_id, api.upload_folder(repo_id=repo_id, folder_path=folder).oid


def lfs_puts(server) -> int:
    return sum(1 for method, path, status in server.requests if method == "PUT" and path.startswith("/lfs-upload/"))


def test_upload_folder_regular_and_lfs_then_download(hub_env, tmp_path):
    text = b"hello from the test hub\n"
    weights = os.urandom(300_000)  # *.bin => LFS
    puts_before = lfs_puts(hub_env.server)
    repo_id, sha = make_repo(hub_env, tmp_path, {"notes.txt": text, "sub/weights.bin": weights})

    assert SHA1.fullmatch(sha)
    assert huggingface_hub.model_info(repo_id).sha == sha  # module-level helpers use an import-time HfApi()
    assert lfs_puts(hub_env.server) == puts_before + 1  # only the .bin went through the LFS upload URL
    tree = {f.path: f for f in hub_env.api("alice").list_repo_tree(repo_id, recursive=True) if hasattr(f, "size")}
    assert set(tree) == {".gitattributes", "notes.txt", "sub/weights.bin"}
    assert tree["notes.txt"].lfs is None and tree["notes.txt"].blob_id == git_blob_sha1(text)
    assert tree["sub/weights.bin"].lfs.sha256 == hashlib.sha256(weights).hexdigest()
    assert tree["sub/weights.bin"].size == len(weights)

    cached = hf_hub_download(repo_id, "sub/weights.bin")
    assert Path(cached).read_bytes() == weights
    assert f"snapshots/{sha}/sub/weights.bin" in cached and cached.startswith(str(hub_env.hub_cache))
    local = hf_hub_download(repo_id, "notes.txt", revision=sha, local_dir=tmp_path / "local")
    assert Path(local).read_bytes() == text
    snapshot = Path(snapshot_download(repo_id))
    assert (snapshot / "notes.txt").read_bytes() == text and (snapshot / "sub/weights.bin").read_bytes() == weights


def test_resolve_headers_match_what_the_client_expects(hub_env, tmp_path):
    text, weights = b"plain text", os.urandom(5000)
    repo_id, sha = make_repo(hub_env, tmp_path, {"a.txt": text, "model.safetensors": weights})

    meta = get_hf_file_metadata(hf_hub_url(repo_id, "model.safetensors"))
    assert (meta.etag, meta.size, meta.commit_hash) == (hashlib.sha256(weights).hexdigest(), len(weights), sha)
    assert meta.xet_file_data is None
    meta = get_hf_file_metadata(hf_hub_url(repo_id, "a.txt"))
    assert (meta.etag, meta.size, meta.commit_hash) == (git_blob_sha1(text), len(text), sha)

    request = urllib.request.Request(hf_hub_url(repo_id, "model.safetensors"), method="HEAD")
    with urllib.request.urlopen(request) as response:
        headers = response.headers
    assert headers["X-Linked-Etag"] == headers["ETag"] == f'"{hashlib.sha256(weights).hexdigest()}"'
    assert headers["X-Linked-Size"] == headers["Content-Length"] == str(len(weights))
    assert headers["X-Repo-Commit"] == sha and not any(k.lower().startswith("x-xet") for k in headers)
    request = urllib.request.Request(hf_hub_url(repo_id, "model.safetensors"), headers={"Range": "bytes=100-"})
    with urllib.request.urlopen(request) as response:
        assert response.status == 206 and response.read() == weights[100:]


def test_large_file_goes_through_lfs_by_size(hub_env, tmp_path):
    hub_env.monkeypatch.setattr(hub_env.server, "lfs_threshold", 50_000)
    big_text = b"lorem ipsum dolor sit amet\n" * 4000  # 108 kB of text: LFS only because of its size
    puts_before = lfs_puts(hub_env.server)
    repo_id, _ = make_repo(hub_env, tmp_path, {"corpus.txt": big_text, "small.txt": b"tiny"})
    assert lfs_puts(hub_env.server) == puts_before + 1
    files = {f.path: f for f in hub_env.api("alice").list_repo_tree(repo_id)}
    assert files["corpus.txt"].lfs is not None and files["small.txt"].lfs is None
    assert Path(hf_hub_download(repo_id, "corpus.txt")).read_bytes() == big_text


def test_second_commit_keeps_old_revision_readable(hub_env, tmp_path):
    api = hub_env.api("alice")
    repo_id, first = make_repo(hub_env, tmp_path, {"config.json": b'{"v": 1}', "w.safetensors": b"\x00old" * 100})
    assert api.model_info(repo_id).sha == first

    second = api.upload_file(path_or_fileobj=b'{"v": 2}', path_in_repo="config.json", repo_id=repo_id).oid
    info = api.model_info(repo_id)
    assert SHA1.fullmatch(second) and second != first and info.sha == second
    assert api.model_info(repo_id, revision=first).sha == first
    assert Path(hf_hub_download(repo_id, "config.json")).read_bytes() == b'{"v": 2}'
    assert Path(hf_hub_download(repo_id, "config.json", revision=first)).read_bytes() == b'{"v": 1}'
    assert Path(hf_hub_download(repo_id, "w.safetensors", revision=second)).read_bytes() == b"\x00old" * 100
    assert [c.commit_id for c in api.list_repo_commits(repo_id)][:2] == [second, first]
    assert api.list_repo_files(repo_id, revision=first) == [".gitattributes", "config.json", "w.safetensors"]

    # Re-uploading identical content is a no-op: preupload reports the remote oid, the client skips the commit.
    assert api.upload_file(path_or_fileobj=b'{"v": 2}', path_in_repo="config.json", repo_id=repo_id).oid == second
    api.delete_file("w.safetensors", repo_id=repo_id)
    assert api.list_repo_files(repo_id) == [".gitattributes", "config.json"]
    assert api.file_exists(repo_id, "w.safetensors", revision=first)


def test_writes_without_or_with_unknown_token_are_401(hub_env, tmp_path):
    repo_id, sha = make_repo(hub_env, tmp_path, {"a.txt": b"a"})
    anonymous = hub_env.api(None)
    with pytest.raises(HfHubHTTPError) as info:
        anonymous.create_repo(hub_env.hub.new_repo_id("alice"))
    assert info.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as info:
        anonymous.upload_file(path_or_fileobj=b"x", path_in_repo="b.txt", repo_id=repo_id)
    assert info.value.response.status_code == 401

    bogus = HfApi(endpoint=hub_env.endpoint, token="hf_not_a_real_token")
    for call in (bogus.whoami, lambda: bogus.upload_file(path_or_fileobj=b"x", path_in_repo="b.txt", repo_id=repo_id)):
        with pytest.raises(HfHubHTTPError) as info:
            call()
        assert info.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as info:  # a bad token is rejected even where anonymous reads would work
        bogus.model_info(repo_id)
    assert info.value.response.status_code == 401 and not isinstance(info.value, RepositoryNotFoundError)
    assert "Invalid credentials in Authorization header" in str(info.value)
    assert hub_env.api(None).model_info(repo_id).sha == sha  # nothing was committed
    assert hub_env.api("alice").whoami()["name"] == "alice"


def test_writing_to_another_namespace_is_403(hub_env, tmp_path):
    repo_id, sha = make_repo(hub_env, tmp_path, {"a.txt": b"a"})
    bob = hub_env.api("bob")
    with pytest.raises(HfHubHTTPError) as info:
        bob.upload_file(path_or_fileobj=b"x", path_in_repo="a.txt", repo_id=repo_id)
    assert info.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as info:
        bob.create_repo(hub_env.hub.new_repo_id("alice"))
    assert info.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as info:
        bob.create_repo(hub_env.hub.new_repo_id("acme"))  # bob is not a member of the org
    assert info.value.response.status_code == 403
    assert hub_env.api("alice").create_repo(hub_env.hub.new_repo_id("acme")).namespace == "acme"
    assert hub_env.api("alice").model_info(repo_id).sha == sha

    with pytest.raises(HfHubHTTPError) as info:  # existing repo, exist_ok=False => 409
        hub_env.api("alice").create_repo(repo_id)
    assert info.value.response.status_code == 409
    hub_env.api("alice").create_repo(repo_id, exist_ok=True)


def test_private_repo_only_readable_by_its_owner(hub_env, tmp_path):
    repo_id, sha = make_repo(hub_env, tmp_path, {"secret.txt": b"s3cret"}, private=True)
    alice = hub_env.api("alice")
    assert alice.model_info(repo_id).private is True and alice.repo_exists(repo_id)
    assert Path(hf_hub_download(repo_id, "secret.txt", token=hub_env.tokens["alice"])).read_bytes() == b"s3cret"

    for user, status in (("bob", 404), (None, 401)):
        api = hub_env.api(user)
        with pytest.raises(RepositoryNotFoundError) as info:
            api.model_info(repo_id)
        assert info.value.response.status_code == status
        assert not api.repo_exists(repo_id)
        with pytest.raises(RepositoryNotFoundError):
            api.list_repo_files(repo_id)
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download(repo_id, "secret.txt", token=hub_env.tokens[user] if user else False,
                            cache_dir=tmp_path / f"cache-{user}")  # alice's download is in the default cache
    hub_env.login("alice")  # implicit token through HF_TOKEN
    assert HfApi(endpoint=hub_env.endpoint).model_info(repo_id).sha == sha


def test_visibility_setting(hub_env, tmp_path):
    repo_id, _ = make_repo(hub_env, tmp_path, {"a.txt": b"x"})
    alice, bob = hub_env.api("alice"), hub_env.api("bob")
    alice.update_repo_settings(repo_id, private=True)
    assert alice.model_info(repo_id).private is True and not bob.repo_exists(repo_id)
    with pytest.raises(RepositoryNotFoundError):  # bob cannot even see it, let alone change it
        bob.update_repo_settings(repo_id, private=False)
    alice.update_repo_settings(repo_id, visibility="public")
    assert bob.model_info(repo_id).private is False
    with pytest.raises(HfHubHTTPError) as info:
        bob.update_repo_settings(repo_id, private=True)
    assert info.value.response.status_code == 403
    request = urllib.request.Request(f"{hub_env.endpoint}/api/models/{repo_id}/settings", method="PUT",
                                     data=json.dumps({"visibility": "secret"}).encode(),
                                     headers={"Authorization": f"Bearer {hub_env.tokens['alice']}"})
    with pytest.raises(urllib.error.HTTPError) as info:  # not a value the Hub knows
        urllib.request.urlopen(request)
    assert info.value.code == 400
    assert alice.model_info(repo_id).private is False


def test_gated_repo(hub_env, tmp_path):
    repo_id, _ = make_repo(hub_env, tmp_path, {"a.txt": b"gated"})
    hub_env.api("alice").update_repo_settings(repo_id, gated="auto")
    assert hub_env.api("bob").model_info(repo_id).gated == "auto"
    with pytest.raises(GatedRepoError):
        hf_hub_download(repo_id, "a.txt", token=hub_env.tokens["bob"])
    assert Path(hf_hub_download(repo_id, "a.txt", token=hub_env.tokens["alice"])).read_bytes() == b"gated"


def test_missing_file_revision_and_repo(hub_env, tmp_path):
    repo_id, sha = make_repo(hub_env, tmp_path, {"a.txt": b"a"})
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "does_not_exist.json")
    # The 404 carries X-Repo-Commit, so the client caches the non-existence for that commit.
    assert try_to_load_from_cache(repo_id, "does_not_exist.json", revision=sha) is _CACHED_NO_EXIST
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, "a.txt", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        hub_env.api("alice").model_info(repo_id, revision="f" * 40)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("alice/never-created", "a.txt")
    assert not hub_env.api("alice").file_exists(repo_id, "b.txt")
    assert hub_env.api("alice").file_exists(repo_id, "a.txt")


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)


def test_subprocess_online_then_offline_from_cache(hub_env, tmp_path):
    repo_id, sha = make_repo(hub_env, tmp_path, {"a.txt": b"cached text", "b.txt": b"never downloaded"},
                             private=True)
    snippet = f"""
        import json, sys
        from huggingface_hub import constants, hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError
        out = {{"endpoint": constants.ENDPOINT, "offline": constants.HF_HUB_OFFLINE}}
        out["a"] = open(hf_hub_download("{repo_id}", "a.txt")).read()
        try:
            hf_hub_download("{repo_id}", "b.txt")
        except LocalEntryNotFoundError:
            out["b"] = "not cached"
        else:
            out["b"] = "downloaded"
        print(json.dumps(out))
    """
    hf_home = tmp_path / "subprocess_hf_home"
    online = run_python(snippet, hub_env.hub.subprocess_env(user="alice", hf_home=hf_home))
    assert online.returncode == 0, online.stderr
    assert json.loads(online.stdout.splitlines()[-1]) == {
        "endpoint": hub_env.endpoint, "offline": False, "a": "cached text", "b": "downloaded"}

    (hf_home / "hub" / f"models--{repo_id.replace('/', '--')}" / "snapshots" / sha / "b.txt").unlink()
    requests_before = len(hub_env.server.requests)
    offline = run_python(snippet, hub_env.hub.subprocess_env(offline=True, hf_home=hf_home))
    assert offline.returncode == 0, offline.stderr
    assert json.loads(offline.stdout.splitlines()[-1]) == {
        "endpoint": hub_env.endpoint, "offline": True, "a": "cached text", "b": "not cached"}
    assert len(hub_env.server.requests) == requests_before  # offline really did not talk to the server


def test_auto_tokenizer_from_hub(hub_env, tmp_path):
    from transformers import AutoTokenizer, BertTokenizerFast

    words = "the movie was great terrible plot acting good bad film".split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *"abcdefghijklmnopqrstuvwxyz.,!"]
    tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)
    tokenizer.save_pretrained(tmp_path / "tok")
    repo_id = hub_env.hub.new_repo_id("alice", "tok")
    api = hub_env.api("alice")
    api.create_repo(repo_id)
    api.upload_folder(repo_id=repo_id, folder_path=tmp_path / "tok")

    loaded = AutoTokenizer.from_pretrained(repo_id)
    assert loaded.get_vocab() == tokenizer.get_vocab()
    text = "The movie was GREAT, plot bad!"
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.convert_ids_to_tokens(loaded(text)["input_ids"])[:4] == ["[CLS]", "the", "movie", "was"]


REMOTE_CONFIG = '''
from transformers import PretrainedConfig


class HubTestConfig(PretrainedConfig):
    model_type = "hub-test-tiny"

    def __init__(self, width=4, **kwargs):
        self.width = width
        super().__init__(**kwargs)
'''

REMOTE_MODEL = '''
import torch
from transformers import PreTrainedModel

from .configuration_hubtest import HubTestConfig


class HubTestModel(PreTrainedModel):
    config_class = HubTestConfig

    def __init__(self, config):
        super().__init__(config)
        self.proj = torch.nn.Linear(config.width, 3)
        self.post_init()

    def forward(self, x):
        return self.proj(x)
'''


def test_auto_config_and_model_with_remote_code(hub_env, tmp_path):
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModel

    weights = {"proj.weight": torch.randn(3, 5), "proj.bias": torch.randn(3)}
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    config = {"model_type": "hub-test-tiny", "width": 5, "architectures": ["HubTestModel"],
              "auto_map": {"AutoConfig": "configuration_hubtest.HubTestConfig",
                           "AutoModel": "modeling_hubtest.HubTestModel"}}
    repo_id, _ = make_repo(hub_env, tmp_path, {
        "config.json": json.dumps(config).encode(), "configuration_hubtest.py": REMOTE_CONFIG.encode(),
        "modeling_hubtest.py": REMOTE_MODEL.encode(),
        "model.safetensors": (tmp_path / "model.safetensors").read_bytes(),
    })

    loaded_config = AutoConfig.from_pretrained(repo_id, trust_remote_code=True)
    assert type(loaded_config).__name__ == "HubTestConfig" and loaded_config.width == 5
    model = AutoModel.from_pretrained(repo_id, trust_remote_code=True)
    assert type(model).__name__ == "HubTestModel"
    torch.testing.assert_close(model.proj.weight.detach(), weights["proj.weight"])
    torch.testing.assert_close(model.proj.bias.detach(), weights["proj.bias"])
