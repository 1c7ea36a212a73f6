"""docs/configuration.md is generated from the config dataclasses (tools/config_doc.py): it must
equal what they say now, and every key of every schema must appear in it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tools.config_doc import SCHEMAS, main, render

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_the_configuration_reference_is_the_generated_one():
    assert main(["--check", str(DOC)]) == 0, "run: python -m tools.config_doc > docs/configuration.md"


def test_every_key_is_documented():
    text = render()

    def keys(schema, prefix=""):
        for field in dataclasses.fields(schema):
            kind = schema.__dataclass_fields__[field.name].type
            value = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
            if dataclasses.is_dataclass(value):
                yield from keys(type(value), f"{prefix}{field.name}.")
            else:
                yield f"{prefix}{field.name}", kind

    for _, schema in SCHEMAS:
        for key, _ in keys(schema):
            assert f"`{key}`" in text, key


def test_every_key_says_what_it_means():
    """A row with an empty meaning column is a field without a comment: write one beside the field."""
    empty = [line.split("|")[1].strip() for line in render().splitlines()
             if line.startswith("| `") and line.rstrip().endswith("|  |")]
    assert empty == []
