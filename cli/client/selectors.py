"""Label selectors for ``lifelong get/describe/delete -l``, as kubectl reads them.

Who calls it: the client's sub-commands (``lifelong.client.commands``) and unit tests. The GM's
API lists every object of a kind; the client keeps those whose ``metadata.labels`` match.

The grammar is Kubernetes' (``k8s.io/apimachinery/pkg/labels``), requirements separated by
commas, all of which must hold:

=====================  ============================================================
``k=v``, ``k==v``      the label ``k`` is ``v``
``k!=v``               the label ``k`` is not ``v`` (or the object has no label ``k``)
``k``                  the object has a label ``k``
``!k``                 the object has no label ``k``
``k in (a,b)``         the label ``k`` is ``a`` or ``b``
``k notin (a,b)``      the label ``k`` is neither (or the object has no label ``k``)
=====================  ============================================================

A malformed selector raises a :class:`~lifelong.common.errors.ValidationError` naming the part
that is wrong (the CLI prints it as one line and exits 2).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from lifelong.common.errors import ValidationError

# A label key: an optional DNS-subdomain prefix and '/', then a name of at most 63 characters
# that starts and ends alphanumeric; a value: empty or such a name.
_NAME = r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_KEY = rf"(?:[a-z0-9](?:[-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_NAME}"
_VALUE = rf"(?:{_NAME})?"

_EXISTS = re.compile(rf"\s*(!?)\s*({_KEY})\s*")
_EQUALITY = re.compile(rf"\s*({_KEY})\s*(==|=|!=)\s*({_VALUE})\s*")
_SET = re.compile(rf"\s*({_KEY})\s+(in|notin)\s*\(([^()]*)\)\s*")
_SET_VALUE = re.compile(rf"\s*({_VALUE})\s*")

Labels = Mapping[str, str]


@dataclass(frozen=True)
class Selector:
    """A parsed selector: ``matches(labels)`` is true when every requirement holds."""

    text: str
    requirements: tuple[Callable[[Labels], bool], ...]

    def matches(self, labels: Labels | None) -> bool:
        have = labels or {}
        return all(req(have) for req in self.requirements)


def _split(text: str) -> list[str]:
    """The requirements of ``text``: split at commas that are not inside parentheses."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _requirement(part: str, text: str) -> Callable[[Labels], bool]:
    if m := _EQUALITY.fullmatch(part):
        key, op, value = m.groups()
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if m := _SET.fullmatch(part):
        key, op, inside = m.groups()
        values = set()
        for item in inside.split(","):
            v = _SET_VALUE.fullmatch(item)
            if v is None:
                raise ValidationError(
                    [("", f"unable to parse requirement {part.strip()!r} of selector {text!r}")]
                )
            values.add(v.group(1))
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if m := _EXISTS.fullmatch(part):
        negate, key = m.groups()
        if negate:
            return lambda labels: key not in labels
        return lambda labels: key in labels
    raise ValidationError(
        [
            (
                "",
                f"unable to parse requirement {part.strip()!r} of selector {text!r} "
                "(expected k=v, k!=v, k, !k, k in (a,b) or k notin (a,b), separated by commas)",
            )
        ]
    )


def parse_selector(text: str) -> Selector:
    """The selector ``text`` (kubectl's ``-l``); an empty text matches everything."""
    if not text.strip():
        return Selector(text, ())
    return Selector(text, tuple(_requirement(part, text) for part in _split(text)))
