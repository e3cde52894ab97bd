"""kubectl's JSONPath templates for ``lifelong get -o jsonpath=TEMPLATE``.

Who calls it: the client's ``get`` (``lifelong.client.commands``) and unit tests. It is the
subset of kubectl's template language (``k8s.io/client-go/util/jsonpath``) that scripts use:

* text outside braces is printed as it is; ``{"\\n"}`` and ``{'\\t'}`` print a quoted literal
  (JSON escapes);
* ``{.metadata.name}``, ``{$.items[0].spec}``, ``{@.name}``: a path from the current object
  (``$`` from the root); steps are ``.field``, ``['field']`` (several: ``['a','b']``), ``[N]``
  (negative from the end), ``[start:end:step]``, ``*`` / ``[*]`` (every element or value),
  ``..field`` (every descendant's) and ``[?(@.path OP VALUE)]`` (elements whose path compares;
  OP is ``== != < <= > >=``, without OP: whose path exists);
* ``{range PATH}...{end}``: the text between, once for each result, with ``@`` that result.

Several results of one path are joined with a space, as kubectl does; strings print as they
are, other values as compact JSON; a path that finds nothing prints nothing (kubectl's default
``--allow-missing-template-keys``). A template that does not parse raises a
:class:`~lifelong.common.errors.ValidationError` saying where (one line, exit 2).

Why our own: the Python JSONPath libraries (jsonpath-ng and its forks) evaluate one path
expression; none implements kubectl's template (text, ``{range}``/``{end}``, literals), so
they would cover only the step evaluation below, which is the smaller part.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from lifelong.common.errors import ValidationError


class _ParseError(Exception):
    pass


# -- path steps ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Field:
    names: tuple[str, ...]

    def apply(self, value: Any) -> Iterator[Any]:
        if isinstance(value, dict):
            for name in self.names:
                if name in value:
                    yield value[name]


@dataclass(frozen=True)
class _All:
    def apply(self, value: Any) -> Iterator[Any]:
        if isinstance(value, dict):
            yield from value.values()
        elif isinstance(value, list):
            yield from value


@dataclass(frozen=True)
class _Index:
    indexes: tuple[int, ...]

    def apply(self, value: Any) -> Iterator[Any]:
        if isinstance(value, list):
            for i in self.indexes:
                if -len(value) <= i < len(value):
                    yield value[i]


@dataclass(frozen=True)
class _Slice:
    start: int | None
    stop: int | None
    step: int | None

    def apply(self, value: Any) -> Iterator[Any]:
        if isinstance(value, list):
            yield from value[self.start : self.stop : self.step]


@dataclass(frozen=True)
class _Descend:
    """The value and every value below it (``..``); the next step picks from them."""

    def apply(self, value: Any) -> Iterator[Any]:
        yield value
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        for child in children:
            yield from self.apply(child)


_OPS = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


@dataclass(frozen=True)
class _Filter:
    path: _Path
    op: str | None
    operand: Any

    def _keep(self, item: Any) -> bool:
        found = list(self.path.evaluate(item, item))
        if self.op is None:
            return bool(found)
        for got in found:
            try:
                if _OPS[self.op](got, self.operand):
                    return True
            except TypeError:  # a string against a number: not a match
                continue
        return False

    def apply(self, value: Any) -> Iterator[Any]:
        if isinstance(value, list):
            yield from (item for item in value if self._keep(item))


_Step = _Field | _All | _Index | _Slice | _Descend | _Filter


@dataclass(frozen=True)
class _Path:
    from_root: bool
    steps: tuple[_Step, ...]

    def evaluate(self, root: Any, current: Any) -> Iterator[Any]:
        values: list[Any] = [root if self.from_root else current]
        for step in self.steps:
            values = [out for value in values for out in step.apply(value)]
        return iter(values)


def _closing(text: str, start: int, open_: str, close: str) -> int:
    """The index of the ``close`` matching ``text[start] == open_``, skipping quoted text."""
    depth, quote = 0, ""
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            if ch == "\\":
                continue
            if ch == quote and text[i - 1] != "\\":
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == open_:
            depth += 1
        elif ch == close:
            depth -= 1
            if depth == 0:
                return i
    raise _ParseError(f"unclosed {open_!r} in {text[start:]!r}")


def _literal(text: str) -> Any:
    """A quoted string, a number, true, false or null."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        if text[0] == "'":
            text = '"' + text[1:-1].replace('"', '\\"') + '"'
        try:
            return json.loads(text, strict=False)  # strict=False: a raw newline is a newline
        except ValueError:
            raise _ParseError(f"bad string literal {text}") from None
    try:
        return json.loads(text)
    except ValueError:
        raise _ParseError(f"bad literal {text!r}") from None


_FILTER = re.compile(r"\?\(\s*(@[^=!<>]*?)\s*(?:(==|!=|<=|>=|<|>)\s*(.+?))?\s*\)")
_SLICE = re.compile(r"(-?\d*):(-?\d*)(?::(-?\d*))?")
_INT = re.compile(r"-?\d+")


def _bracket(inside: str) -> _Step:
    inside = inside.strip()
    if inside == "*":
        return _All()
    if m := _FILTER.fullmatch(inside):
        path, op, operand = m.groups()
        return _Filter(_parse_path(path), op, None if op is None else _literal(operand))
    if m := _SLICE.fullmatch(inside):
        start, stop, step = (int(g) if g else None for g in m.groups())
        if step == 0:
            raise _ParseError("a slice's step cannot be 0")
        return _Slice(start, stop, step)
    items = [item.strip() for item in inside.split(",")]
    if items and all(_INT.fullmatch(item) for item in items):
        return _Index(tuple(int(item) for item in items))
    if items and all(len(item) >= 2 and item[0] == item[-1] and item[0] in "'\"" for item in items):
        return _Field(tuple(str(_literal(item)) for item in items))
    raise _ParseError(f"cannot read [{inside}]")


def _parse_path(text: str) -> _Path:
    text = text.strip()
    from_root = text.startswith("$")
    i = 1 if text[:1] in ("$", "@") else 0
    steps: list[_Step] = []
    while i < len(text):
        if text.startswith("..", i):
            steps.append(_Descend())
            i += 1  # the second dot (or a bracket after it) starts the next step
            if i + 1 < len(text) and text[i + 1] == "[":
                i += 1
            continue
        ch = text[i]
        if ch == ".":
            m = re.compile(r"[^.\[\]\s]*").match(text, i + 1)
            assert m is not None  # the pattern matches the empty string
            name = m.group()
            if name == "*":
                steps.append(_All())
            elif name:
                steps.append(_Field((name,)))
            i = m.end()
        elif ch == "[":
            end = _closing(text, i, "[", "]")
            steps.append(_bracket(text[i + 1 : end]))
            i = end + 1
        else:
            raise _ParseError(f"unexpected {text[i:]!r} (a path's steps start with '.' or '[')")
    return _Path(from_root, tuple(steps))


# -- the template ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Range:
    path: _Path
    body: tuple[_Node, ...]


_Node = str | _Path | _Range


def _actions(template: str) -> Iterator[tuple[bool, str]]:
    """(is an action, text) in order: the text between braces, and the text outside them."""
    i = 0
    while i < len(template):
        start = template.find("{", i)
        if start < 0:
            yield False, template[i:]
            return
        if start > i:
            yield False, template[i:start]
        end = _closing(template, start, "{", "}")
        yield True, template[start + 1 : end]
        i = end + 1


def _parse(template: str) -> tuple[_Node, ...]:
    stack: list[tuple[_Path | None, list[_Node]]] = [(None, [])]
    for is_action, text in _actions(template):
        body = stack[-1][1]
        if not is_action:
            body.append(text)
            continue
        action = text.strip()
        if action == "end":
            if len(stack) == 1:
                raise _ParseError("{end} without {range}")
            path, nodes = stack.pop()
            assert path is not None
            stack[-1][1].append(_Range(path, tuple(nodes)))
        elif action.startswith("range ") or action == "range":
            stack.append((_parse_path(action[len("range") :]), []))
        elif action[:1] in ("'", '"'):
            body.append(str(_literal(action)))
        elif action[:1] in (".", "$", "@", "["):
            body.append(_parse_path(action))
        else:
            raise _ParseError(f"unrecognized action {{{action}}}")
    if len(stack) > 1:
        raise _ParseError("{range} without {end}")
    return tuple(stack[0][1])


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


@dataclass(frozen=True)
class Template:
    """A parsed template; ``render(data)`` is what kubectl would print for ``data``."""

    source: str
    nodes: tuple[_Node, ...]

    def render(self, data: Any) -> str:
        out: list[str] = []
        self._render(self.nodes, data, data, out)
        return "".join(out)

    def _render(self, nodes: tuple[_Node, ...], root: Any, current: Any, out: list[str]) -> None:
        for node in nodes:
            if isinstance(node, str):
                out.append(node)
            elif isinstance(node, _Path):
                out.append(" ".join(_text(v) for v in node.evaluate(root, current)))
            else:
                for item in node.path.evaluate(root, current):
                    self._render(node.body, root, item, out)


def parse_template(template: str) -> Template:
    """The template of ``-o jsonpath=TEMPLATE``, or ``ValidationError`` saying what is wrong."""
    try:
        return Template(template, _parse(template))
    except _ParseError as exc:
        raise ValidationError([("", f"error parsing jsonpath {template!r}: {exc}")]) from None
