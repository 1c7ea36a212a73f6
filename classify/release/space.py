"""A Hugging Face Space (Gradio) that demonstrates a published classifier: build the folder, push it.

    dapt-publish RUN --repo-id USER/MODEL --space USER/SPACE [--space-dry-run]

The folder holds ``app.py`` (``classify/release/space_template/app.py`` with the model repository and what
the model does written in), ``requirements.txt``, ``README.md`` whose YAML header is the Space's
configuration (``sdk: gradio``, ``sdk_version``, ``app_file``, ``models``) and, when the run has
one, ``examples.json``: the short validation texts stage 2 picked (``RUN/examples.json``), which the
app offers as examples and opens on. The app downloads the model repository with
``hf_hub_download`` at start-up, so the Space holds no weights. Title, emoji, description and
wording follow the run (:func:`model_card.task.describe`): movie-review sentiment for a binary IMDb
run, else a K-class text classifier with its labels. Gradio is needed only by the Space itself
(and the tests): nothing here imports it.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import yaml

from classify.release.hub_io import check_repo_id, format_listing, push_folder
from classify.release.publish_guard import PublishError, read_run_json
from model_card.task import describe, is_sentiment

TEMPLATE = Path(__file__).resolve().parent / "space_template" / "app.py"
REPO_LINE = re.compile(r"^MODEL_REPO = None .*$", re.MULTILINE)
TASK_LINE = re.compile(r"^TASK = None .*$", re.MULTILINE)
MARKER = "written by `dapt-publish --space`"
EXAMPLES = "examples.json"
MAX_EXAMPLES = 32  # what the Space lists; stage 2 writes a few per class
SHORT_DESCRIPTION_CHARS = 60  # the Hub's limit on a Space's short_description
# The Gradio release the app was written against; the installed one wins when present.
DEFAULT_GRADIO = "6.31.0"
REQUIREMENTS = ("torch", "transformers>=5,<6", "huggingface_hub>=1.0", "safetensors>=0.4")


def gradio_version() -> str:
    try:
        return metadata.version("gradio")
    except metadata.PackageNotFoundError:
        return DEFAULT_GRADIO


@dataclass
class SpaceTask:
    """What the Space says the model does (written into app.py as ``TASK``)."""

    title: str  # the page's heading
    item: str  # what one input is called: "review" or "text"
    labels: list[str]
    movie: bool = False  # the flagship: binary IMDb movie-review sentiment

    @property
    def sentiment(self) -> bool:
        return is_sentiment(self.labels)

    @property
    def emoji(self) -> str:
        return "🎬" if self.movie else ("💬" if self.sentiment else "🔖")

    @property
    def short_description(self) -> str:
        if self.movie:
            return "Movie review sentiment, and which part of a long review was read"
        if self.sentiment:
            return "Sentiment of a text, and which part of it was read"
        text = f"{len(self.labels)}-class text classifier: {', '.join(self.labels)}"
        return text if len(text) <= SHORT_DESCRIPTION_CHARS else text[: SHORT_DESCRIPTION_CHARS - 1].rstrip(", ") + "…"


MOVIE_TASK = SpaceTask("Movie review sentiment", "review", ["Negative", "Positive"], movie=True)


def space_task(run_dir=None) -> SpaceTask:
    """The run's task (labels and data from results.json, labels also from model/config.json); the
    movie-review flagship when no run is given (what this Space always was)."""
    if run_dir is None:
        return MOVIE_TASK
    run_dir = Path(run_dir)
    results = read_run_json(run_dir / "results.json", run_dir)
    config = read_run_json(run_dir / "model" / "config.json", run_dir) if (run_dir / "model" / "config.json").exists() else None
    task = describe(results, config)
    if task.imdb:
        return MOVIE_TASK
    if task.sentiment:
        return SpaceTask("Sentiment (Negative / Positive)", "text", task.labels)
    return SpaceTask(f"Text classification: {', '.join(task.labels)}", "text", task.labels)


def run_examples(run_dir, labels: list[str]) -> list[dict] | None:
    """``RUN/examples.json`` as the Space shows it: ``[{"text", "label"}]`` (the true label's name),
    at most :data:`MAX_EXAMPLES`; None when the run has none. A malformed file is an error naming
    the file and the entry, raised before anything is written."""
    run_dir = Path(run_dir)
    path = run_dir / EXAMPLES
    if not path.exists() and not path.is_symlink():
        return None
    document = read_run_json(path, run_dir)
    entries = document.get("examples") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise PublishError(f"{path}: expected an object with a list 'examples', got {type(document).__name__}")
    examples = []
    for index, entry in enumerate(entries[:MAX_EXAMPLES]):
        text = entry.get("text") if isinstance(entry, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise PublishError(f"{path}: examples[{index}] has no text (a non-empty string under 'text')")
        label = entry.get("label")
        if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(labels):
            label = labels[label]
        if label not in labels:
            raise PublishError(f"{path}: examples[{index}] label {label!r} is not one of the model's labels {labels}")
        examples.append({"text": text, "label": label})
    return examples


def render_app(model_repo_id: str, task: SpaceTask | None = None) -> str:
    source = TEMPLATE.read_text(encoding="utf-8")
    for line, text in ((REPO_LINE, "MODEL_REPO = None ..."), (TASK_LINE, "TASK = None ...")):
        if len(line.findall(source)) != 1:
            raise PublishError(f"{TEMPLATE} must contain exactly one line '{text}'")
    source = REPO_LINE.sub(lambda _: f"MODEL_REPO = {model_repo_id!r}", source, count=1)
    task = MOVIE_TASK if task is None else task
    fields = {k: v for k, v in asdict(task).items() if k in ("title", "item")}
    return TASK_LINE.sub(lambda _: f"TASK = {fields!r}", source, count=1)


def render_readme(model_repo_id: str, space_id: str, task: SpaceTask | None = None) -> str:
    task = MOVIE_TASK if task is None else task
    name = space_id.split("/")[-1]
    config = {"title": name, "emoji": task.emoji, "colorFrom": "indigo", "colorTo": "green", "sdk": "gradio",
              "sdk_version": gradio_version(), "app_file": "app.py", "models": [model_repo_id], "pinned": False,
              "short_description": task.short_description}
    # quoted where YAML needs it (a label list holds ": "), plain otherwise
    header = "---\n" + yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=1000) + "---"
    if task.movie:
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
`model.safetensors`, then `DistilBERTClassifier()` (the alias every model.py has) and `infer_reviews`.
"""
    else:
        what = ("a sentiment classifier (Negative / Positive)" if task.sentiment else
                f"a {len(task.labels)}-class text classifier ({', '.join(task.labels)})")
        body = f"""
# {name}

A demo of [{model_repo_id}](https://huggingface.co/{model_repo_id}), {what} trained with dapt
(domain-adaptive pretraining, then a linear head on the `[CLS]` state). Type a text, or one text
per line in the second tab.

It shows every label's probability (calibrated when the model stores a temperature) and,
highlighted, which part of a long text the model read: texts longer than the model's `max_length`
are truncated (head, or head+tail), and the words it never saw are greyed out.

The app loads the model as its card tells you to: `hf_hub_download` of `model.py` and
`model.safetensors`, then `DistilBERTClassifier()` (the alias every model.py has), `predict_proba` and `infer_reviews`.
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


def build_space_folder(model_repo_id: str, space_id: str, folder, *, run_dir=None) -> Path:
    """Write the Space for ``model_repo_id`` into ``folder`` (replaced only if this built it);
    ``run_dir``: the stage-2 run it serves (its task and ``examples.json``)."""
    check_repo_id(model_repo_id, "--repo-id")
    check_repo_id(space_id, "--space")
    task = space_task(run_dir)
    examples = run_examples(run_dir, task.labels) if run_dir is not None else None
    folder = Path(folder)
    if not _is_our_folder(folder):
        raise PublishError(f"{folder} exists and was not built by dapt-publish --space; choose another folder")
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / "app.py").write_text(render_app(model_repo_id, task), encoding="utf-8")
    (folder / "requirements.txt").write_text("\n".join(REQUIREMENTS) + "\n", encoding="utf-8")
    (folder / "README.md").write_text(render_readme(model_repo_id, space_id, task), encoding="utf-8")
    if examples:
        (folder / EXAMPLES).write_text(json.dumps({"examples": examples}, indent=1, ensure_ascii=False) + "\n",
                                       encoding="utf-8")
    return folder


def push_space(folder, space_id: str, private: bool = False, token: str | None = None) -> str:
    """Push the Space folder as the model repository is pushed (the same leak check, visibility
    rule and error messages: :func:`~classify.release.hub_io.push_folder`); the commit id."""
    return push_folder(folder, space_id, private=private, token=token, repo_type="space",
                       commit_message="Upload the Space with dapt-publish --space")


def default_space_folder(run_dir, space_id: str) -> Path:
    return Path(run_dir) / "space" / space_id.split("/")[-1]


def publish_space(run_dir, model_repo_id: str, space_id: str, *, dry_run: bool = False, private: bool = False,
                  folder=None, token=None) -> dict:
    """Build the Space folder and, unless ``dry_run``, push it; prints nothing, returns what it did."""
    folder = Path(folder) if folder is not None else default_space_folder(run_dir, space_id)
    build_space_folder(model_repo_id, space_id, folder, run_dir=run_dir)
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
