"""The pieces a sample is made of: its id, the values of its row, its label; and their bounds.

A leaf of ``lifelong.common`` (it imports only ``envelope``), so that the knowledge base's shapes
(``lifelong.common.kb``) and the internal ``LabelledSamples`` kind (``lifelong.common.api.labelled``)
share them without importing each other.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, Field, StrictFloat, StrictInt, StrictStr

from lifelong.common.envelope import MAX_INT

MAX_SAMPLE_ID = 128
"""Characters of a sample id."""
MAX_SAMPLES_PER_POST = 500
"""Samples one worker-API post, one upstream report or one KB request carries; more are split."""
MAX_SAMPLE_BYTES = 64 * 1024
"""The most one sample may take as compact JSON (its row, attributes and guesses)."""
MAX_ROW_FIELDS = 4096
"""Columns of one sample's row."""

_SAMPLE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _sample_id(value: str) -> str:
    if not _SAMPLE_ID.match(value):
        raise ValueError("must start with a letter or digit and hold only letters, digits, '.', '_' and '-'")
    return value


SampleId = Annotated[StrictStr, Field(min_length=1, max_length=MAX_SAMPLE_ID), AfterValidator(_sample_id)]
"""A sample's id: unique within its job (the library makes one from the sample's content, so a
sample sent twice is stored once)."""
Scalar = StrictStr | StrictInt | StrictFloat | None
"""One value of a row or an attribute (a CSV cell as read, or a number)."""
Label = StrictStr | StrictInt
Confidence = Annotated[StrictFloat, Field(ge=0.0, le=1.0)]
Count = Annotated[StrictInt, Field(ge=0, le=MAX_INT)]


def check_row(value: dict[str, Any]) -> dict[str, Any]:
    if len(value) > MAX_ROW_FIELDS:
        raise ValueError(f"has {len(value)} columns, over {MAX_ROW_FIELDS}")
    return value


def label_from_text(text: str) -> str | int:
    """A label (or predicted class) typed as text, on a command line or in a query string: a
    whole number is the number, a value in double quotes the string inside them, anything else
    the string as it is (``3`` -> 3, ``"3"`` -> "3", ``cat`` -> "cat")."""
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    digits = text[1:] if text[:1] == "-" else text
    if digits.isascii() and digits.isdigit():
        return int(text)
    return text
