"""What may leave this machine when a run is published (used by :mod:`classify.release.publish`).

Publishing goes through one interface: :func:`vet_run` reads a run folder once - ``results.json``
and ``model/config.json`` (local paths scrubbed, one finished run) and the files to copy as they are
(weights, tokenizer files, PNG plots; regular files inside the run only) - into a :class:`VettedRun`,
whose :meth:`~VettedRun.copy_into` writes them and :meth:`~VettedRun.leaks` is the last check over
the built folder. The rules behind it:

* **Regular files only.** A symbolic link in a run folder (``plots/x.png`` or ``model/vocab.txt``
  pointing at ``~/.ssh/id_rsa``) would upload the target's bytes; :func:`check_regular` refuses
  links, FIFOs and devices by name before anything is written, and :func:`copy_regular` opens with
  ``O_NOFOLLOW`` and re-checks the inode, so a file swapped for a link in between is refused too.
* **No local paths.** ``results.json`` and the classifier config record where things were on this
  machine (the encoder as ``/home/me/.venv/.../site-packages/...``, ``output_dir``, data files).
  :func:`scrub_paths` rewrites every such string into a path-free name: a Hub id where the path is
  a Hub cache snapshot, ``pypi:<distribution>`` for a file inside an installed package, else the
  file or directory's own name. :func:`find_leaks` is the last check over the built folder.
* **No tokens.** :func:`find_leaks` also refuses a folder holding the token about to be used, or
  anything shaped like a Hugging Face token, in any file.
* **One finished, finite run.** :func:`check_same_run` refuses a run folder whose ``results.json``
  and ``model/`` disagree (a half-failed re-run), :func:`check_finite` NaN/Inf weights.
* **Visibility is never weakened** (:func:`ensure_repo`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
import fnmatch
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import Any, Iterable, Sequence

logger = logging.getLogger("classify.release.publish")

# An absolute (or ~) POSIX path inside a longer string; not the path part of a URL (":" or "/" or a
# word character before the slash), not the "/" of "pos/neg".
_EMBEDDED_PATH = re.compile(r"(?<![\w.~/:-])~?/[^\s'\"`,;()\[\]{}<>|]+")
_HUB_CACHE_DIR = re.compile(r"^(models|datasets|spaces)--(.+)$")
# Hugging Face user access tokens: "hf_" and 34 letters (older ones: "api_...").
_TOKEN_SHAPE = re.compile(rb"(?<![A-Za-z0-9_])(hf|api)_[A-Za-z0-9]{30,}(?![A-Za-z0-9_])")
_PACKAGE_DIRS = ("site-packages", "dist-packages")


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class PublishError(RuntimeError):
    """Building or pushing the repository failed; the message says why and what to do."""


class UnsafeFileError(PublishError):
    """A file that must not be published (a link, not a regular file, a local path, a token)."""


# --------------------------------------------------------------------------------------------
# Regular files only
# --------------------------------------------------------------------------------------------


def check_regular(path: Path, under: Path | None = None) -> Path:
    """``path`` if it and every directory between ``under`` and it are real (not links)."""
    path = Path(path)
    chain = [path]
    if under is not None:
        chain = [parent for parent in reversed(path.parents) if Path(under) in parent.parents] + chain
    for item in chain:
        try:
            mode = os.lstat(item).st_mode
        except FileNotFoundError:
            raise UnsafeFileError(f"{item} not found") from None
        if stat.S_ISLNK(mode):
            raise UnsafeFileError(
                f"{item} is a symbolic link: dapt-publish uploads regular files only "
                "(a link could publish any file on this machine); replace it with the file itself"
            )
        wanted = stat.S_ISREG if item is path else stat.S_ISDIR
        if not wanted(mode):
            raise UnsafeFileError(f"{item} is not a regular {'file' if item is path else 'directory'}")
    return path


def read_regular(path: Path) -> bytes:
    with _open_regular(path) as handle:
        return handle.read()


def read_run_json(path: Path, run_dir: Path) -> Any:
    """A run's JSON file (a regular file, not a link), local paths made path-free."""
    if not path.exists() and not path.is_symlink():
        raise PublishError(f"{path} not found: is this a stage-2 output directory?")
    try:
        return scrub_paths(json.loads(read_regular(check_regular(path, run_dir))))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PublishError(f"{path} is not valid JSON: {error}") from None


def copy_regular(source: Path, target: Path) -> None:
    with _open_regular(source) as handle, open(target, "wb") as out:
        shutil.copyfileobj(handle, out, 1 << 20)


def _open_regular(path: Path):
    before = os.lstat(path)
    if not stat.S_ISREG(before.st_mode):
        raise UnsafeFileError(f"{path} is not a regular file (a link or special file); refusing to publish it")
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as error:  # ELOOP: it became a link after the check
        raise UnsafeFileError(f"{path} cannot be opened as a regular file ({error.strerror}); refusing to publish it") from None
    after = os.fstat(descriptor)
    if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
        os.close(descriptor)
        raise UnsafeFileError(f"{path} changed while it was being copied; refusing to publish it")
    return os.fdopen(descriptor, "rb")


# --------------------------------------------------------------------------------------------
# No local paths
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _distributions() -> dict[str, list[str]]:
    from importlib.metadata import packages_distributions

    return packages_distributions()


def public_name(path: str) -> str:
    """A path-free name for a local ``path`` (see the module docstring)."""
    if re.match(r"^[A-Za-z]:[\\/]", path):
        parts = PureWindowsPath(path).parts
    else:
        parts = Path(os.path.expanduser(path.rstrip("/") or "/")).parts
    for part in parts:
        match = _HUB_CACHE_DIR.match(part)
        if match:
            return match.group(2).replace("--", "/")
    for marker in _PACKAGE_DIRS:
        if marker in parts[:-1]:
            module = parts[parts.index(marker) + 1].split(".")[0]
            dists = _distributions().get(module)
            return f"pypi:{dists[0]}" if dists else module
    return parts[-1] if len(parts) > 1 else "."


def _is_local_path(value: str) -> bool:
    """Absolute, ``~`` or drive-letter paths. Relative ones (``runs/encoder``, ``plots/x.png``) say
    nothing about this machine and would make the output depend on the working directory."""
    return value.startswith(("/", "~")) or bool(re.match(r"^[A-Za-z]:[\\/]", value))


def scrub_paths(value: Any) -> Any:
    """``value`` (JSON-like) with every local path replaced by :func:`public_name`."""
    if isinstance(value, dict):
        return {key: scrub_paths(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub_paths(item) for item in value]
    if not isinstance(value, str):
        return value
    if "\n" not in value and _is_local_path(value):
        return public_name(value)
    return _EMBEDDED_PATH.sub(lambda match: public_name(match.group(0)), value)


def local_prefixes(*extra: str | os.PathLike) -> list[str]:
    """Absolute directories whose names must not appear in a published file (with a trailing /)."""
    candidates = [Path.home(), Path.cwd(), sys.prefix, sys.base_prefix, tempfile.gettempdir(), *extra]
    out = set()
    for candidate in candidates:
        text = str(candidate).rstrip("/")
        if text.count("/") >= 1 and len(text) > 1:  # "/" itself says nothing
            out.add(text + "/")
            out.add(str(Path(text).resolve()).rstrip("/") + "/")
    return sorted(out, key=len, reverse=True)


def find_leaks(folder: Path, prefixes: Iterable[str], token: str | None = None) -> list[str]:
    """``"FILE: what"`` for every file of ``folder`` holding a local path prefix or a token."""
    problems = []
    # A prefix counts where a path would start, not inside a URL ("https://x.org/w/" is not "/w/").
    encoded = [(prefix, re.compile(rb"(?<![\w.:/~-])" + re.escape(prefix.encode()))) for prefix in prefixes]
    for path in sorted(Path(folder).rglob("*")):
        if path.is_dir() and not path.is_symlink():
            continue
        if path.is_symlink() or not path.is_file():
            problems.append(f"{path.relative_to(folder).as_posix()}: not a regular file (upload_folder would follow it)")
            continue
        data = _safetensors_header(path) if path.suffix == ".safetensors" else path.read_bytes()
        name = path.relative_to(folder).as_posix()
        if token and len(token) >= 8 and token.encode() in data:  # a real token, not a test stub
            problems.append(f"{name}: holds the Hugging Face token this push would use")
        elif _TOKEN_SHAPE.search(data):
            problems.append(f"{name}: holds something shaped like a Hugging Face token (hf_...)")
        for prefix, pattern in encoded:
            if pattern.search(data):
                problems.append(f"{name}: holds the local path {prefix}")
                break
    return problems


def _safetensors_header(path: Path) -> bytes:
    """The JSON header (names, shapes, metadata): the only text a weights file carries. Random
    weight bytes are not scanned, where a short prefix such as ``/tmp/`` would match by chance."""
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        return handle.read(min(size, 100 << 20))


# --------------------------------------------------------------------------------------------
# One finished, finite run; visibility never weakened
# --------------------------------------------------------------------------------------------


def check_same_run(results: dict, config: dict, run_dir: Path) -> None:
    """results.json and model/ must describe one run: a re-run that failed half-way can leave the
    old results beside new weights (or the reverse), and the card would then lie about the model."""
    hyper = results.get("hyperparameters") or {}
    differ = [f"{key} {hyper[key]!r} vs {config[key]!r}" for key in ("max_length", "truncation", "head_tokens")
              if key in hyper and key in config and hyper[key] != config[key]]
    if differ:
        raise PublishError(
            f"{run_dir}: results.json and model/config.json describe different runs ({'; '.join(differ)}); "
            "re-run training or evaluation so both come from the same run"
        )


def check_finite(state: dict) -> None:
    """Every floating-point weight is finite: a diverged run's NaN weights are never published."""
    import torch

    nonfinite = {name: int((~torch.isfinite(t)).sum()) for name, t in state.items() if t.is_floating_point()}
    nonfinite = {name: count for name, count in nonfinite.items() if count}
    if nonfinite:
        raise PublishError(
            f"model.safetensors holds {sum(nonfinite.values())} NaN/Inf values in {len(nonfinite)} tensors "
            f"(first: {next(iter(nonfinite))}): the run diverged; refusing to publish it"
        )


def ensure_repo(api, repo_id: str, private: bool, repo_type: str = "model") -> bool:
    """Create ``repo_id`` (a model repository, or a Gradio Space with ``repo_type="space"``) if
    needed and return whether it is private.

    Visibility is never weakened: ``private=True`` on an existing public repository makes it private
    *before* anything is uploaded (and refuses if the Hub does not), ``private=False`` on an
    existing private repository keeps it private. Both are logged as warnings.
    """
    sdk = {"space_sdk": "gradio"} if repo_type == "space" else {}
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, **sdk)
    is_private = bool(api.repo_info(repo_id, repo_type=repo_type).private)
    if private and not is_private:
        logger.warning(f"{repo_id} exists and is public: making it private before uploading, as --private asks")
        api.update_repo_settings(repo_id, private=True, repo_type=repo_type)
        is_private = bool(api.repo_info(repo_id, repo_type=repo_type).private)
        if not is_private:
            raise PublishError(f"{repo_id} is still public after asking the Hub to make it private; nothing uploaded")
    elif not private and is_private:
        logger.warning(f"{repo_id} exists and is private: it stays private (dapt-publish never makes a repository public)")
    return is_private


# --------------------------------------------------------------------------------------------
# The interface: a run folder, vetted once
# --------------------------------------------------------------------------------------------


@dataclass
class VettedRun:
    """A stage-2 run folder as publishing may use it (built by :func:`vet_run`)."""

    root: Path
    results: dict  # results.json, local paths made path-free
    config: dict  # model/config.json, likewise
    files: dict[str, Path]  # repository path -> regular file of the run, copied as is

    def copy_into(self, folder: Path) -> None:
        """Copy :attr:`files` into ``folder`` (no link followed, a file swapped meanwhile refused)."""
        for name, source in self.files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            copy_regular(source, folder / name)

    def leaks(self, folder: Path) -> list[str]:
        """The last check over a built folder: local paths (this machine's and the run's) and tokens."""
        return find_leaks(folder, local_prefixes(self.root.resolve()))


def vet_run(run_dir, weights_name: str, tokenizer_patterns: Sequence[str]) -> VettedRun:
    """Read and check the run folder ``run_dir`` before anything is written: its JSON files, that they
    describe one run, and every file to publish as is (``model/WEIGHTS``, ``model/`` files matching
    ``tokenizer_patterns``, ``plots/*.png`` that are PNG images), all regular files inside it."""
    root = Path(run_dir)
    model_dir = root / "model"
    results = read_run_json(root / "results.json", root)
    config = read_run_json(model_dir / "config.json", root)
    check_same_run(results, config, root)
    weights = model_dir / weights_name
    if not weights.exists() and not weights.is_symlink():
        raise PublishError(f"{weights} not found: the run has no saved classifier")
    files = {weights_name: check_regular(weights, root)}
    for path in sorted(model_dir.iterdir()):
        if any(fnmatch.fnmatch(path.name, p) for p in tokenizer_patterns):
            files[path.name] = check_regular(path, root)
    if len(files) == 1:
        raise PublishError(f"no tokenizer files in {model_dir}")
    plots = root / "plots"
    if plots.exists() or plots.is_symlink():
        for png in sorted(plots.glob("*.png")):
            check_regular(png, root)  # also refuses plots/ itself being a link
            if read_regular(png)[:8] != PNG_SIGNATURE:
                raise PublishError(f"{png} is not a PNG image; only the run's own plots are published")
            files[f"plots/{png.name}"] = png
    return VettedRun(root=root, results=results, config=config, files=files)
