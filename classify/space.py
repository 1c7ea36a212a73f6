"""A Hugging Face Space (Gradio) that demonstrates a published classifier: build the folder, push it.

    dapt-publish RUN --repo-id USER/MODEL --space USER/SPACE [--space-dry-run]

The folder holds ``app.py`` (``classify/space_template/app.py`` with the model repository written
in), ``requirements.txt`` and ``README.md`` whose YAML header is the Space's configuration
(``sdk: gradio``, ``sdk_version``, ``app_file``, ``models``). The app downloads the model repository
with ``hf_hub_download`` at start-up, so the Space holds no weights. Gradio is needed only by the
Space itself (and the tests): nothing here imports it.
"""

from __future__ import annotations

import re
import shutil
from importlib import metadata
from pathlib import Path

from classify.hub_io import check_repo_id, format_listing, push_folder
from classify.publish_guard import PublishError

TEMPLATE = Path(__file__).resolve().parent / "space_template" / "app.py"
REPO_LINE = re.compile(r"^MODEL_REPO = None .*$", re.MULTILINE)
MARKER = "written by `dapt-publish --space`"
# The Gradio release the app was written against; the installed one wins when present.
DEFAULT_GRADIO = "6.31.0"
REQUIREMENTS = ("torch", "transformers>=5,<6", "huggingface_hub>=1.0", "safetensors>=0.4")


def gradio_version() -> str:
    try:
        return metadata.version("gradio")
    except metadata.PackageNotFoundError:
        return DEFAULT_GRADIO


def render_app(model_repo_id: str) -> str:
    source = TEMPLATE.read_text(encoding="utf-8")
    if len(REPO_LINE.findall(source)) != 1:
        raise PublishError(f"{TEMPLATE} must contain exactly one line 'MODEL_REPO = None ...'")
    return REPO_LINE.sub(lambda _: f"MODEL_REPO = {model_repo_id!r}", source, count=1)


def render_readme(model_repo_id: str, space_id: str) -> str:
    name = space_id.split("/")[-1]
    header = "\n".join([
        "---",
        f"title: {name}",
        "emoji: 🎬",
        "colorFrom: indigo",
        "colorTo: green",
        "sdk: gradio",
        f"sdk_version: {gradio_version()}",
        "app_file: app.py",
        "models:",
        f"- {model_repo_id}",
        "pinned: false",
        "short_description: Movie review sentiment, and which part of a long review was read",
        "---",
    ])
    body = f"""
# {name}

A demo of [{model_repo_id}](https://huggingface.co/{model_repo_id}), a sentiment classifier for
movie reviews trained with dapt (domain-adaptive pretraining, then a linear head on the `[CLS]`
state). Type a review, or one review per line in the second tab.

It shows the label, the model's confidence (calibrated when the model stores a temperature) and,
highlighted, which part of a long review the model read: reviews longer than the model's
`max_length` are truncated (head, or head+tail to keep the closing verdict), and the words it never
saw are greyed out.

The app loads the model as its card tells you to: `hf_hub_download` of `model.py` and
`model.safetensors`, then `DistilBERTClassifier()` and `infer_reviews`.
"""
    return header + "\n" + body


def _is_our_folder(folder: Path) -> bool:
    if not folder.exists():
        return True
    if not folder.is_dir():
        return False
    if not any(folder.iterdir()):
        return True
    app = folder / "app.py"
    return app.is_file() and MARKER in app.read_text(encoding="utf-8", errors="replace")


def build_space_folder(model_repo_id: str, space_id: str, folder) -> Path:
    """Write the Space for ``model_repo_id`` into ``folder`` (replaced only if this built it)."""
    check_repo_id(model_repo_id, "--repo-id")
    check_repo_id(space_id, "--space")
    folder = Path(folder)
    if not _is_our_folder(folder):
        raise PublishError(f"{folder} exists and was not built by dapt-publish --space; choose another folder")
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / "app.py").write_text(render_app(model_repo_id), encoding="utf-8")
    (folder / "requirements.txt").write_text("\n".join(REQUIREMENTS) + "\n", encoding="utf-8")
    (folder / "README.md").write_text(render_readme(model_repo_id, space_id), encoding="utf-8")
    return folder


def push_space(folder, space_id: str, private: bool = False, token: str | None = None) -> str:
    """Push the Space folder as the model repository is pushed (the same leak check, visibility
    rule and error messages: :func:`~classify.hub_io.push_folder`); the commit id."""
    return push_folder(folder, space_id, private=private, token=token, repo_type="space",
                       commit_message="Upload the Space with dapt-publish --space")


def default_space_folder(run_dir, space_id: str) -> Path:
    return Path(run_dir) / "space" / space_id.split("/")[-1]


def publish_space(run_dir, model_repo_id: str, space_id: str, *, dry_run: bool = False, private: bool = False,
                  folder=None, token=None) -> dict:
    """Build the Space folder and, unless ``dry_run``, push it; prints nothing, returns what it did."""
    folder = Path(folder) if folder is not None else default_space_folder(run_dir, space_id)
    build_space_folder(model_repo_id, space_id, folder)
    commit = None if dry_run else push_space(folder, space_id, private=private, token=token)
    return {"space_id": space_id, "folder": str(folder), "commit": commit}


def report(result: dict) -> str:
    """The lines dapt-publish prints about the Space."""

    lines = [f"space folder: {result['folder']}", format_listing(result["folder"])]
    if result["commit"] is None:
        lines.append(f"space dry run: nothing uploaded (would push to spaces/{result['space_id']})")
    else:
        lines.append(f"pushed space {result['space_id']} at commit {result['commit']}")
    return "\n".join(lines)
