"""docs/configuration.md, generated from the config dataclasses (their fields, types, defaults and
the comments beside them), so the reference cannot drift from the code.

    python -m tools.config_doc > docs/configuration.md      # rewrite it
    python -m tools.config_doc --check docs/configuration.md  # exit 1 when it differs (tests do this)

A field's description is the comment on its line (or the comment lines right above it); a field
re-declared without a comment (a new default) keeps the comment it inherits. A field whose type is
itself a config dataclass becomes its own group (its comment, if any, introduces the group's table); a
list or mapping of them names its entry type, which gets a table of its own. NOTES adds a hand-written
paragraph under a stage's heading.
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

Overrides name a key by its dotted path; list entries by their index:

    dapt-pretrain --config configs/pretrain.yaml output_dir=runs/dapt-x train.max_steps=1000
    dapt-pretrain --config configs/pretrain.yaml data.sources.0.max_documents=1000
    dapt-pretrain --config configs/pretrain.yaml 'data.sources=[{path: my.jsonl}]'   # replace the list
"""
SCHEMAS = (("Stage 1: `dapt-pretrain` / `python -m dapt.pretrain`", PretrainConfig),
           ("Stage 2: `dapt-classify` / `python -m classify.train` (and `dapt-evaluate`)", ClassifyConfig),
           ("The ablation: `dapt-ablate` / `python -m experiments.ablation`", AblationConfig))
NOTES = {
    ClassifyConfig: """`configs/classify.yaml` keeps the model card's learning rates for DistilBERT (encoder 1e-5, head
5e-5). The smaller stand-in encoder needs larger ones: `configs/classify-minilm.yaml` uses 5e-5 / 5e-4
(a plain reference loop on one H100, full IMDb train, 3 epochs, bf16, 512 tokens, reached IMDb test
accuracy 0.926 without DAPT and 0.931 with it, against 0.911 / 0.921 with the card's rates; these
configs themselves have not yet been run on a GPU in this repository).""",
}


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
                if text or match.group(1) not in comments:  # a bare re-declaration keeps the inherited comment
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


def _default_value(field: dataclasses.Field):
    """The field's default (a fresh one from its factory), or MISSING."""
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def _default(field: dataclasses.Field, parent=None):
    """The default column; ``parent``: the enclosing group's default object, whose values win over the
    field's own (AblationConfig.dapt's config is configs/pretrain.yaml, DaptStageConfig's is None)."""
    value = getattr(parent, field.name) if parent is not None else _default_value(field)
    if value is dataclasses.MISSING:
        return "(required)"
    if dataclasses.is_dataclass(value):
        return None
    if isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
        return "[" + ", ".join(f"{{path: {v.path}, ...}}" if hasattr(v, "path") else type(v).__name__ for v in value) + "]"
    if isinstance(value, dict) and value and any(dataclasses.is_dataclass(v) for v in value.values()):
        return "{" + ", ".join(value) + "}"
    return repr(value)


def tables(schema, prefix: str = "", seen: dict | None = None, intro: str = "", parent=None) -> list[str]:
    """Markdown tables of ``schema``: one per group (nested config dataclass; ``intro``: the comment on
    its field; ``parent``: the group's default object), entry types last."""
    seen = {} if seen is None else seen
    hints = typing.get_type_hints(schema)
    comments = field_comments(schema)
    rows, groups = [], []
    for field in dataclasses.fields(schema):
        annotation = hints[field.name]
        if dataclasses.is_dataclass(annotation):
            group_default = getattr(parent, field.name) if parent is not None else _default_value(field)
            groups.append((f"{prefix}{field.name}", annotation, comments.get(field.name, ""), group_default))
            continue
        entry = _entry_class(annotation)
        kind = _type_name(annotation)
        if entry is not None:
            seen.setdefault(entry.__name__, entry)
            kind = kind.replace(f"{entry.__module__}.{entry.__qualname__}", entry.__name__)
        default = _default(field, parent)
        rows.append(f"| `{prefix}{field.name}` | {kind} | `{default}` | {comments.get(field.name, '')} |")
    out = []
    if rows:
        out += ["", f"#### `{prefix.rstrip('.') or 'top level'}`", *(["", intro.replace("\\|", "|")] if intro else []),
                "", "| key | type | default | meaning |", "|---|---|---|---|", *rows]
    for name, group, comment, group_default in groups:
        out += tables(group, f"{name}.", seen, comment, group_default)
    return out


def render() -> str:
    lines = [HEADER]
    for title, schema in SCHEMAS:
        entries: dict = {}
        lines += ["", f"## {title}"] + (["", NOTES[schema]] if schema in NOTES else []) + tables(schema, "", entries)
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
