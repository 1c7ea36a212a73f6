"""Pytest fixtures for the local Hub server in :mod:`tests.hub_server`.

* ``hub_server`` (session scope): a running :class:`HubHandle` -- ``.endpoint``, ``.tokens`` (user -> token for
  ``alice``, ``bob`` and ``carol``; ``alice`` is also a member of the org ``acme``), ``.server`` (the
  :class:`~tests.hub_server.HubServer`, e.g. ``.server.requests`` to assert on traffic), ``.new_repo_id(user)``
  and ``.subprocess_env(token=None, offline=False, hf_home=None, *, user=None)``.
* ``hub_env`` (function scope): points the already-imported ``huggingface_hub`` (and transformers' cached
  ``HfApi``) at the server with a fresh ``HF_HOME``, no token, Xet/telemetry off and offline mode off.

``huggingface_hub.constants`` computes the endpoint, cache paths, token path and the offline/Xet/telemetry flags
once at import time, so setting environment variables is not enough in-process: :func:`patch_hub_client` patches
those module attributes too. ``datasets`` does the same in ``datasets.config``: :func:`patch_datasets_client`
(used by tests/test_hub_recipes.py) patches those.
"""

from __future__ import annotations

import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.hub_server import HubServer

USERS = ("alice", "bob", "carol")
ORGS = {"acme": ["alice"]}

# Environment variables that would make a client (in-process or subprocess) escape the test server or cache.
_CLEARED_ENV = (
    "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_OIDC_RESOURCE", "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ASSETS_CACHE", "HUGGINGFACE_ASSETS_CACHE",
    "HF_XET_CACHE", "HF_MODULES_CACHE", "HUGGINGFACE_CO_STAGING", "HF_HUB_DISABLE_IMPLICIT_TOKEN",
)


def hub_environ(endpoint: str, hf_home: str | os.PathLike, *, token: str | None = None,
                offline: bool = False) -> dict[str, str]:
    """The variables (name -> value, ``None`` = unset) that point a fresh client at ``endpoint``."""
    env: dict[str, str | None] = dict.fromkeys(_CLEARED_ENV)
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(hf_home), HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_DISABLE_UPDATE_CHECK="1", HF_HUB_OFFLINE="1" if offline else None, HF_TOKEN=token)
    return env


def patch_hub_client(monkeypatch: pytest.MonkeyPatch, endpoint: str, hf_home: str | os.PathLike,
                     *, offline: bool = False) -> None:
    """Apply :func:`hub_environ` to ``os.environ`` and to everything derived from it at import time."""
    for name, value in hub_environ(endpoint, hf_home, offline=offline).items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)

    from huggingface_hub import constants

    home = str(hf_home)
    hub_cache, assets_cache = os.path.join(home, "hub"), os.path.join(home, "assets")
    values = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": frozenset(constants.HF_URL_HOSTS | {urlsplit(endpoint).hostname}),
        "HF_HOME": home,
        "default_cache_path": hub_cache, "HUGGINGFACE_HUB_CACHE": hub_cache, "HF_HUB_CACHE": hub_cache,
        "default_assets_cache_path": assets_cache, "HUGGINGFACE_ASSETS_CACHE": assets_cache,
        "HF_ASSETS_CACHE": assets_cache,
        "default_xet_cache_path": os.path.join(home, "xet"), "HF_XET_CACHE": os.path.join(home, "xet"),
        "HF_TOKEN_PATH": os.path.join(home, "token"), "HF_STORED_TOKENS_PATH": os.path.join(home, "stored_tokens"),
        "CHECK_FOR_UPDATE_DONE_PATH": os.path.join(home, ".check_for_update_done"),
        "CHECK_FOR_SKILL_UPDATE_DONE_PATH": os.path.join(home, ".check_for_skill_update_done"),
        "AGENT_HARNESSES_PATH": os.path.join(home, ".agent_harnesses.json"),
        "HF_HUB_OFFLINE": offline, "HF_HUB_DISABLE_XET": True, "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_UPDATE_CHECK": True, "HF_HUB_DISABLE_IMPLICIT_TOKEN": False,
    }
    for name, value in values.items():
        monkeypatch.setattr(constants, name, value, raising=False)

    # Copies taken at import time by other modules (`from ..constants import X`, module-level HfApi()).
    copies = {
        "huggingface_hub.utils._cache_manager": {"HF_HUB_CACHE": hub_cache},
        "huggingface_hub.utils._cache_assets": {"HF_ASSETS_CACHE": assets_cache},
        "huggingface_hub.utils._git_credential": {"ENDPOINT": endpoint},
        "transformers.utils.hub": {"_hf_api": None},  # transformers caches an HfApi bound to the old endpoint
    }
    for module_name, attrs in copies.items():
        module = sys.modules.get(module_name)
        for name, value in attrs.items():
            if module is not None and hasattr(module, name):
                monkeypatch.setattr(module, name, value)
    hf_api = sys.modules.get("huggingface_hub.hf_api")
    if hf_api is not None:  # huggingface_hub.model_info & co. are methods of this module-level instance
        monkeypatch.setattr(hf_api.api, "endpoint", endpoint)
    http = sys.modules.get("huggingface_hub.utils._http")
    if http is not None and hasattr(http, "_HUB_ORIGINS"):  # hosts the auth header may be redirected to
        origin = urlsplit(endpoint)
        monkeypatch.setattr(http, "_HUB_ORIGINS", http._HUB_ORIGINS | {(origin.scheme, origin.hostname, origin.port)})


def patch_datasets_client(monkeypatch: pytest.MonkeyPatch, endpoint: str, hf_home: str | os.PathLike) -> None:
    """Point ``datasets`` (which copies its own endpoint, offline flag and cache paths into ``datasets.config``
    at import time) at ``endpoint``, online, with its caches under ``hf_home``. Use with :func:`patch_hub_client`:
    ``datasets`` downloads through ``huggingface_hub``.

    Two calls that would leave the loopback are switched off: the download-count ping (a HEAD to an S3 URL)
    and the dataset viewer's parquet export (``datasets-server.<host>``, a separate service this server does
    not emulate; ``datasets`` falls back to the repo's own files without it)."""
    home = Path(hf_home)
    cache = home / "datasets"
    for name in ("HF_DATASETS_OFFLINE", "HF_DATASETS_CACHE", "HF_DATASETS_DOWNLOADED_DATASETS_PATH",
                 "HF_DATASETS_EXTRACTED_DATASETS_PATH", "HF_MODULES_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))

    import datasets.config as config

    values = {
        "HF_ENDPOINT": endpoint,
        "HUB_DATASETS_URL": endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}",
        "HF_HUB_OFFLINE": False, "HF_DATASETS_OFFLINE": False,
        "HF_CACHE_HOME": str(home), "HF_DATASETS_CACHE": cache, "HF_MODULES_CACHE": home / "modules",
        "DOWNLOADED_DATASETS_PATH": cache / "downloads", "EXTRACTED_DATASETS_PATH": cache / "downloads" / "extracted",
        "HF_UPDATE_DOWNLOAD_COUNTS": False, "USE_PARQUET_EXPORT": False,
    }
    for name, value in values.items():
        monkeypatch.setattr(config, name, value)


class HubHandle:
    """What the ``hub_server`` fixture yields."""

    def __init__(self, server: HubServer, tmp_root: Path):
        self.server = server
        self.endpoint = server.endpoint
        self.tokens = {user: token for token, user in server.tokens.items()}  # user -> token
        self._tmp_root = tmp_root

    def new_repo_id(self, user: str = "alice", prefix: str = "repo") -> str:
        """A repo id nobody used yet in this session (the server lives for the whole session)."""
        return f"{user}/{prefix}-{uuid.uuid4().hex[:10]}"

    def subprocess_env(self, token: str | None = None, offline: bool = False, hf_home: str | os.PathLike | None = None,
                       *, user: str | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
        """A full environment for ``subprocess.run(..., env=...)``: a fresh interpreter pointed at the server.

        ``token`` is a raw token (or pass ``user="alice"``); neither means anonymous. ``offline=True`` sets
        ``HF_HUB_OFFLINE=1`` (cache-only reads). ``hf_home`` defaults to a new empty directory; pass the one of a
        previous download (e.g. ``hub_env.hf_home``) to read its cache. ``base`` defaults to ``os.environ``.
        """
        if user is not None:
            token = self.tokens[user]
        if hf_home is None:
            hf_home = self._tmp_root / f"hf_home-{uuid.uuid4().hex[:8]}"
        env = dict(os.environ if base is None else base)
        for name, value in hub_environ(self.endpoint, hf_home, token=token, offline=offline).items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env


@dataclass
class HubEnv:
    """What the ``hub_env`` fixture returns: the server handle plus this test's client-side state."""

    hub: HubHandle
    hf_home: Path
    monkeypatch: pytest.MonkeyPatch

    @property
    def endpoint(self) -> str:
        return self.hub.endpoint

    @property
    def tokens(self) -> dict[str, str]:
        return self.hub.tokens

    @property
    def server(self) -> HubServer:
        return self.hub.server

    @property
    def hub_cache(self) -> Path:
        return self.hf_home / "hub"

    def login(self, user: str) -> str:
        """Make ``user`` the implicit token (via ``HF_TOKEN``) for calls that pass no ``token=``."""
        self.monkeypatch.setenv("HF_TOKEN", self.tokens[user])
        return self.tokens[user]

    def logout(self) -> None:
        self.monkeypatch.delenv("HF_TOKEN", raising=False)

    def set_offline(self, offline: bool = True) -> None:
        """Toggle ``HF_HUB_OFFLINE`` in-process (env var and the import-time constant)."""
        from huggingface_hub import constants

        self.monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
        if offline:
            self.monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        else:
            self.monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def api(self, user: str | None = None):
        """An ``HfApi`` on the server, authenticated as ``user`` (``None``: anonymous, never the implicit token)."""
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=self.tokens[user] if user else False)

    def subprocess_env(self, token: str | None = None, offline: bool = False, hf_home: str | os.PathLike | None = None,
                       **kwargs) -> dict[str, str]:
        """Like :meth:`HubHandle.subprocess_env`, sharing this test's ``HF_HOME`` (and so its cache) by default."""
        return self.hub.subprocess_env(token, offline, self.hf_home if hf_home is None else hf_home, **kwargs)


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory):
    tokens = {f"hf_{user}_test_token": user for user in USERS}
    server = HubServer(tokens=tokens, orgs=ORGS).start()
    try:
        yield HubHandle(server, tmp_path_factory.mktemp("hub_server"))
    finally:
        server.shutdown()


@pytest.fixture
def hub_env(hub_server, monkeypatch, tmp_path) -> HubEnv:
    hf_home = tmp_path / "hf_home"
    hf_home.mkdir()
    patch_hub_client(monkeypatch, hub_server.endpoint, hf_home)
    return HubEnv(hub_server, hf_home, monkeypatch)
