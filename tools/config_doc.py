"""docs/configuration.md, generated from the config dataclasses (their fields, types, defaults and
the comments beside them), so the reference cannot drift from the code.

    python -m tools.config_doc > docs/configuration.md      # rewrite it
    python -m tools.config_doc --check docs/configuration.md  # exit 1 when it differs (tests do this)

A field's description is the comment on its line (or the comment lines right above it); a field
whose type is itself a config dataclass becomes its own group, a list or mapping of them names its
entry type, which gets a table of its own.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys
import typing
from pathlib import Path

from classify.config import ClassifyConfig
from dapt.pretrain_config import PretrainConfig
from experiments.ablation.config import AblationConfig

HEADER = """# Configuration reference

Generated from the config dataclasses by `python -m tools.config_doc` (a test fails when this file and
the code disagree). Every stage reads YAML (`--config FILE`) and `key=value` overrides on the
command line, merged onto these defaults; an unknown key or a value of the wrong type is an error
naming the key. A mapping of named entries (`data.eval`) holds its defaults only until something
names its entries: a config file's list replaces them, `data.eval.NAME.path=FILE` adds one.
"""
SCHEMAS = (("Stage 1: `dapt-pretrain` / `python -m dapt.pretrain`", PretrainConfig),
           ("Stage 2: `dapt-classify` / `python -m classify.train` (and `dapt-evaluate`)", ClassifyConfig),
           ("The ablation: `dapt-ablate` / `python -m experiments.ablation`", AblationConfig))


def field_comments(cls) -> dict[str, str]:
    """Field name -> the comment beside it (or the comment lines right above it), over the MRO."""
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):
            continue
        above: list[str] = []
        for line in lines:
            stripped = line.strip()
            if stripped.startswith("#"):
                above.append(stripped.lstrip("# ").strip())
                continue
            match = re.match(r"\s+(\w+)\s*:\s*[^=#]+(?:=[^#]*)?(?:#\s*(.*))?$", line)
            if match and match.group(1) in klass.__dataclass_fields__:
                text = " ".join(part for part in (" ".join(above), match.group(2) or "") if part)
                comments[match.group(1)] = text.replace("|", "\\|")
            above = []
    return comments


def _entry_class(annotation):
    """The config dataclass inside ``List[X]``, ``Dict[str, Optional[X]]``, ``Optional[X]``, or None."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    for arg in args:
        if dataclasses.is_dataclass(arg):
            return arg
        inner = _entry_class(arg)
        if inner is not None:
            return inner
    return None


def _type_name(annotation) -> str:
    name = getattr(annotation, "__name__", None) if not typing.get_args(annotation) else None
    return name or str(annotation).replace("typing.", "").replace("NoneType", "None")


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "(required)"
    if dataclasses.is_dataclass(value):
        return None
    if isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
        return "[" + ", ".join(f"{{path: {v.path}, ...}}" if hasattr(v, "path") else type(v).__name__ for v in value) + "]"
    if isinstance(value, dict) and value and any(dataclasses.is_dataclass(v) for v in value.values()):
        return "{" + ", ".join(value) + "}"
    return repr(value)


def tables(schema, prefix: str = "", seen: dict | None = None) -> list[str]:
    """Markdown tables of ``schema``: one per group (nested config dataclass), entry types last."""
    seen = {} if seen is None else seen
    hints = typing.get_type_hints(schema)
    comments = field_comments(schema)
    rows, groups = [], []
    for field in dataclasses.fields(schema):
        annotation = hints[field.name]
        if dataclasses.is_dataclass(annotation):
            groups.append((f"{prefix}{field.name}", annotation))
            continue
        entry = _entry_class(annotation)
        kind = _type_name(annotation)
        if entry is not None:
            seen.setdefault(entry.__name__, entry)
            kind = kind.replace(f"{entry.__module__}.{entry.__qualname__}", entry.__name__)
        rows.append(f"| `{prefix}{field.name}` | {kind} | `{_default(field)}` | {comments.get(field.name, '')} |")
    out = []
    if rows:
        out += ["", f"#### `{prefix.rstrip('.') or 'top level'}`", "", "| key | type | default | meaning |",
                "|---|---|---|---|", *rows]
    for name, group in groups:
        out += tables(group, f"{name}.", seen)
    return out


def render() -> str:
    lines = [HEADER]
    for title, schema in SCHEMAS:
        entries: dict = {}
        lines += ["", f"## {title}"] + tables(schema, "", entries)
        for name, entry in sorted(entries.items()):
            lines += ["", f"#### entries of type `{name}`"] + tables(entry, "", {})[2:]
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", metavar="FILE", help="compare with FILE instead of printing; exit 1 when they differ")
    args = parser.parse_args(argv)
    text = render()
    if args.check is None:
        sys.stdout.write(text)
        return 0
    if Path(args.check).read_text(encoding="utf-8") != text:
        print(f"{args.check} differs from the config dataclasses: run python -m tools.config_doc > {args.check}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
