"""Build the Hugging Face repository folder from a stage-2 run directory and push it.

    dapt-publish RUN_DIR --repo-id USER/NAME [--folder DIR] [--private] [--dry-run]

The folder holds ``model.safetensors`` (the classifier's state dict), ``config.json`` (the
``DaptClassifierConfig``, with ``auto_map`` for ``trust_remote_code``), the tokenizer files, a
self-contained ``model.py`` (``classify/model.py`` with the encoder config and inference settings
written into ``EMBEDDED_CONFIG``), ``README.md`` (the model card, metrics from ``results.json``),
``results.json`` and the evaluation plots. It is uploaded with ``HfApi.create_repo`` +
``HfApi.upload_folder``. The token comes from the argument, ``HF_TOKEN`` or the saved login and is
never printed, logged or written.

Safety (:mod:`classify.release.publish_guard`): only regular files are read (a symbolic link is refused by
name), local paths are written as path-free names, a folder holding the token or a local path is
never uploaded, and visibility is never weakened: ``--private`` makes an existing public repository
private before uploading; without it an existing private repository stays private.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import inspect
import json
import logging
import pprint
import re
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

from dapt.core import text as text_rules
from model_card.render import render_card, validate_card
from classify.model import WEIGHTS_NAME, to_config_json
from classify.release import space
from classify.release.hub_io import check_repo_id, explain_hub_error, format_listing, list_folder, push_folder, resolve_token  # noqa: F401 - part of this module's interface
from classify.release.publish_guard import PNG_SIGNATURE, PublishError, check_finite, scrub_paths, vet_run  # noqa: F401 - PNG_SIGNATURE, PublishError: part of this module's interface

logger = logging.getLogger(__name__)

MODEL_SOURCE = Path(__file__).resolve().parents[1] / "model.py"  # classify/model.py
EMBED_LINE = re.compile(r"^EMBEDDED_CONFIG = None$", re.MULTILINE)
TEXT_IMPORT_LINE = re.compile(r"^from dapt\.core\.text import clean_text\b.*$", re.MULTILINE)
TOKENIZER_PATTERNS = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "*.model",
    "chat_template.*",
)
# Remote files a push replaces as a set: what an earlier push left and this run lacks is deleted in
# the same commit (other files in the repository, e.g. ones added by hand, are kept).
REPLACED_PATTERNS = ["plots/*.png", *TOKENIZER_PATTERNS]
# Files this tool writes; a folder holding anything else is not ours to wipe.
_BUILT_MARKERS = ("model.py", "config.json", "README.md")


# --------------------------------------------------------------------------------------------
# Building the folder
# --------------------------------------------------------------------------------------------


def inline_text_rules(source: str) -> str:
    """``model.py`` source with its ``from dapt.core.text import clean_text`` line replaced by that
    module's code (the one cleaning rule, standard library only): the published file imports no dapt."""
    if len(TEXT_IMPORT_LINE.findall(source)) != 1:
        raise PublishError("model.py must contain exactly one line 'from dapt.core.text import clean_text ...'")
    text = inspect.getsource(text_rules)
    first = next(node for node in ast.parse(text).body[1:]  # the docstring and `from __future__` stay behind
                 if not (isinstance(node, ast.ImportFrom) and node.module == "__future__"))
    code = "".join(text.splitlines(keepends=True)[first.lineno - 1:]).strip()
    block = f"# --- dapt/core/text.py, written here by dapt-publish ---\n{code}\n# --- end of dapt/core/text.py ---"
    return TEXT_IMPORT_LINE.sub(lambda _: block, source, count=1)


def published_model_source(config: dict) -> str:
    """The published ``model.py``: :data:`MODEL_SOURCE` standing alone, ``config`` embedded."""
    return embed_config(inline_text_rules(MODEL_SOURCE.read_text(encoding="utf-8")), config)


def embed_config(source: str, config: dict) -> str:
    """``model.py`` source with ``EMBEDDED_CONFIG = None`` replaced by ``config`` (a literal)."""
    if len(EMBED_LINE.findall(source)) != 1:
        raise PublishError("model.py must contain exactly one line 'EMBEDDED_CONFIG = None'")
    literal = pprint.pformat(config, indent=1, width=100, sort_dicts=False)
    if ast.literal_eval(literal) != config:  # only plain JSON-like values may be embedded
        raise PublishError("the classifier config does not round-trip as a Python literal")
    return EMBED_LINE.sub(lambda _: f"EMBEDDED_CONFIG = {literal}", source, count=1)


def _import_standalone(model_py: Path):
    """Import a written model.py from a temp dir that has nothing else beside it."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "model.py"
        shutil.copyfile(model_py, copy)
        name = f"_dapt_published_model_{uuid.uuid4().hex}"
        spec = importlib.util.spec_from_file_location(name, copy)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        finally:
            sys.modules.pop(name, None)
        return module


def verify_folder(folder: Path) -> None:
    """The written model.py alone rebuilds the architecture and loads the weights strictly, and
    every weight is finite (a diverged run's NaN weights are never published)."""
    from transformers.modeling_utils import load_state_dict

    module = _import_standalone(folder / "model.py")
    if module.EMBEDDED_CONFIG is None:
        raise PublishError("model.py was written without an embedded config")
    classifier = module.DaptClassifier()
    state = load_state_dict(str(folder / "model.safetensors"))
    check_finite(state)
    try:
        classifier.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise PublishError(f"the published model.py does not match model.safetensors: {error}") from None


def _is_our_folder(folder: Path) -> bool:
    if folder.is_symlink():  # rmtree would refuse it; its target is not ours to wipe either
        return False
    if not folder.exists():
        return True
    if not folder.is_dir():
        return False
    entries = list(folder.iterdir())
    if not entries:
        return True
    config = folder / "config.json"
    if not all((folder / name).is_file() for name in _BUILT_MARKERS):
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type") == "dapt-encoder-classifier"
    except (OSError, json.JSONDecodeError):
        return False


def build_repo_folder(run_dir, folder, repo_id: str, *, verify: bool = True) -> Path:
    """Write the Hub repository for the stage-2 run ``run_dir`` into ``folder``; returns ``folder``.

    An existing ``folder`` is replaced only if it is empty or was built by this function. Only
    regular files are read (a link is refused by name), and local paths in ``results.json`` and the
    config are written as path-free names (:mod:`classify.release.publish_guard`).
    """

    run_dir, folder = Path(run_dir), Path(folder)
    model_dir = run_dir / "model"
    run = vet_run(run_dir, WEIGHTS_NAME, TOKENIZER_PATTERNS)  # everything read and checked before a write
    results, config = run.results, run.config
    if not _is_our_folder(folder):
        raise PublishError(f"{folder} exists and was not built by dapt-publish; choose another --folder")
    if folder.resolve() in (run_dir.resolve(), model_dir.resolve()):
        raise PublishError("--folder must not be the run directory itself")
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)

    run.copy_into(folder)
    plots = [name for name in run.files if name.startswith("plots/")]
    tokenizer_config = folder / "tokenizer_config.json"
    if tokenizer_config.is_file():  # may record where the tokenizer was loaded from
        original = json.loads(tokenizer_config.read_text(encoding="utf-8"))
        if scrub_paths(original) != original:
            tokenizer_config.write_text(json.dumps(scrub_paths(original), indent=2) + "\n", encoding="utf-8")

    if results.get("base_model") and not config.get("base_model"):
        config["base_model"] = results["base_model"]
    repo_config = to_config_json(config, auto_map=True)
    (folder / "config.json").write_text(json.dumps(repo_config, indent=2) + "\n", encoding="utf-8")
    embedded = to_config_json(config, auto_map=False)
    embedded.pop("transformers_version", None)
    (folder / "model.py").write_text(published_model_source(embedded), encoding="utf-8")
    (folder / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")

    card = render_card(results, repo_id, plots=plots, config=config)
    validate_card(card, results, repo_id, config=config)
    (folder / "README.md").write_text(card, encoding="utf-8")
    leaks = run.leaks(folder)
    if leaks:
        raise PublishError(f"{folder} would publish local information: {'; '.join(leaks[:5])}")
    if verify:
        verify_folder(folder)
    return folder


def push(folder, repo_id: str, private: bool = False, token: str | None = None, commit_message: str | None = None) -> str:
    """Upload a built model repository folder (:func:`~classify.release.hub_io.push_folder`: leak check,
    visibility, errors); an earlier run's plots and tokenizer files not in this one are deleted."""
    return push_folder(folder, repo_id, private=private, token=token, commit_message=commit_message,
                       repo_type="model", delete_patterns=REPLACED_PATTERNS)


# --------------------------------------------------------------------------------------------
# Orchestration and CLI
# --------------------------------------------------------------------------------------------


def default_folder(run_dir, repo_id: str) -> Path:
    return Path(run_dir) / "hub" / repo_id.split("/")[-1]


def publish_run(run_dir, repo_id: str, private: bool = False, dry_run: bool = False, folder=None, token=None) -> dict:
    """Build the folder for ``run_dir`` and (unless ``dry_run``) push it to ``repo_id``.

    Returns ``{"folder", "files": [(path, bytes)], "commit": id or None, "repo_id"}``.
    """
    check_repo_id(repo_id)
    folder = Path(folder) if folder is not None else default_folder(run_dir, repo_id)
    build_repo_folder(run_dir, folder, repo_id)
    result = {"repo_id": repo_id, "folder": str(folder), "files": list_folder(folder), "commit": None}
    if dry_run:
        return result
    results = json.loads((folder / "results.json").read_text(encoding="utf-8"))  # paths already scrubbed
    run_name = results.get("run_name") or Path(run_dir).name
    message = f"dapt-publish: run {run_name} ({results.get('created', 'unknown date')})"
    result["commit"] = push(folder, repo_id, private=private, token=token, commit_message=message)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="dapt-publish",
        description="Build the Hugging Face repository for a stage-2 run and push it to the Hub.",
    )
    parser.add_argument("run_dir", help="stage-2 output directory (model/, results.json, plots/)")
    parser.add_argument("--repo-id", required=True, help="USER/NAME on the Hub")
    parser.add_argument("--folder", help="where to build the repository folder (default RUN_DIR/hub/NAME)")
    parser.add_argument("--private", action="store_true",
                        help="the repository is private: created private, or made private if it exists and is public "
                             "(without --private an existing private repository stays private)")
    parser.add_argument("--dry-run", action="store_true", help="build the folder and list it; upload nothing")
    parser.add_argument("--space", metavar="USER/NAME", help="also build (and push) a Gradio Space demonstrating the model")
    parser.add_argument("--space-dry-run", action="store_true", help="build the Space folder only; upload no Space")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.space_dry_run and not args.space:
        parser.error("--space-dry-run needs --space USER/NAME")
    if args.space is not None:
        try:
            check_repo_id(args.space, "--space")
        except PublishError as error:
            parser.error(str(error))
    try:
        result = publish_run(args.run_dir, args.repo_id, private=args.private, dry_run=args.dry_run, folder=args.folder)
        if args.space:
            space_result = space.publish_space(args.run_dir, args.repo_id, args.space, private=args.private,
                                               dry_run=args.dry_run or args.space_dry_run)
    except PublishError as error:
        raise SystemExit(f"dapt-publish: error: {error}") from None
    print(f"repository folder: {result['folder']}")
    print(format_listing(result["folder"]))
    if args.dry_run:
        print(f"dry run: nothing uploaded (would push to {args.repo_id})")
    else:
        print(f"pushed {args.repo_id} at commit {result['commit']}")
    if args.space:
        print(space.report(space_result))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
