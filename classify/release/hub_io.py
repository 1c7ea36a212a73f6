"""What publishing a model and publishing its Space share: folder listings, the token, the Hub's
errors explained in one line, and the repo-id check."""

from __future__ import annotations

import os
from pathlib import Path

from classify.release.publish_guard import PublishError, ensure_repo, find_leaks, local_prefixes
from dapt.core.hub import repo_id_problem


def list_folder(folder) -> list[tuple[str, int]]:
    folder = Path(folder)
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_size) for p in folder.rglob("*") if p.is_file())


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def format_listing(folder) -> str:
    rows = list_folder(folder)
    width = max([len(name) for name, _ in rows] + [5])
    lines = [f"{name:<{width}}  {_human(size):>10}" for name, size in rows]
    total = sum(size for _, size in rows)
    lines.append(f"{'total':<{width}}  {_human(total):>10}  ({len(rows)} files)")
    return "\n".join(lines)


def resolve_token(token: str | None = None) -> str:
    """Explicit token, else ``HF_TOKEN``, else the saved login; PublishError if none."""
    if token:
        return token
    from huggingface_hub import get_token

    token = os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise PublishError(
            "no Hugging Face token: set HF_TOKEN, run `hf auth login`, or pass a token "
            "(a write token is needed to create and push the repository)"
        )
    return token


def explain_hub_error(error: Exception, repo_id: str, endpoint: str) -> PublishError:
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(error, OfflineModeIsEnabled):
        return PublishError("the Hub is unreachable: offline mode is on (HF_HUB_OFFLINE=1); unset it to push")
    if isinstance(error, HfHubHTTPError) and getattr(error, "response", None) is not None:
        status = error.response.status_code
        if status == 401:
            return PublishError(f"the Hub rejected the token (401 Unauthorized) at {endpoint}; log in again")
        if status == 403:
            return PublishError(f"the token has no write access to {repo_id} (403 Forbidden)")
        if status == 404:
            return PublishError(f"{repo_id} not found or not accessible with this token (404)")
        detail = f": {error.server_message}" if getattr(error, "server_message", None) else ""
        return PublishError(f"the Hub answered {status} while pushing {repo_id}{detail}")
    return PublishError(f"could not reach the Hub at {endpoint} ({type(error).__name__}); check the network")


def check_repo_id(repo_id, what: str = "--repo-id") -> str:
    """``repo_id`` if the Hub would accept it as ``USER/NAME``; PublishError (the Hub's rule, naming
    the option ``what``) if not."""
    problem = repo_id_problem(repo_id)
    if problem is not None:
        raise PublishError(f"{what} {problem}")
    return repo_id


def push_folder(folder, repo_id: str, *, private: bool = False, token: str | None = None, commit_message: str | None = None,
                repo_type: str = "model", delete_patterns: list[str] | None = None) -> str:
    """Create the repository (a model, or a Gradio Space with ``repo_type="space"``; see
    :func:`~classify.release.publish_guard.ensure_repo` for visibility) and ``upload_folder``; returns the
    new commit's id. A folder holding the token or a local path is refused first."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    try:
        from httpx2 import HTTPError as _TransportBase  # huggingface_hub's HTTP client
    except ImportError:  # pragma: no cover - other hub versions
        _TransportBase = OSError

    folder = Path(folder)
    if not folder.is_dir():
        raise PublishError(f"{folder} is not a directory")
    token = resolve_token(token)
    api = HfApi(token=token)
    endpoint = api.endpoint or constants.ENDPOINT
    commit_message = commit_message or f"Upload {folder.name} with dapt-publish"
    leaks = find_leaks(folder, local_prefixes(), token=token)
    if leaks:  # never name the token itself
        raise PublishError(f"refusing to upload {folder}: {'; '.join(leaks[:5])}")
    try:
        ensure_repo(api, repo_id, private, repo_type=repo_type)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type=repo_type,
                                 commit_message=commit_message, delete_patterns=delete_patterns)
    except (HfHubHTTPError, _TransportBase, OSError) as error:
        raise explain_hub_error(error, repo_id, endpoint) from None
    return getattr(info, "oid", None) or str(info)
