"""Data sources in the shape of Sedna's: ``BaseDataSource`` with ``x`` and ``y``, and the parsers
of the Dataset files the LC writes for a round (``CSVDataParse``, ``TxtDataParse``).

Who uses it: the workers (``examples/lifelong/``) parse ``TRAIN_DATASET_URL``/``TEST_DATASET_URL``
with them and hand the result to ``LifelongLearning``. The files are those of
docs/writing-workers.md ("The pools"): a ``csv`` file's first line is its header, a ``txt`` file
holds ``path [label]`` per line; blank lines are no samples; a ``file://`` URL is a local path.

Unlike Sedna's (pandas), ``x`` of a parsed csv file is a 2-D numpy array (numbers where a cell
parses as one, else the text) with its column names in ``columns``; ``rows`` keeps each
line as read (column -> text), which is what an unseen sample carries to the knowledge base.
A source built in code may give the data attributes in ``meta_attr`` (one mapping per sample)
instead of as columns.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from lifelong.learning.registry import ClassFactory, ClassType

__all__ = ["BaseDataSource", "CSVDataParse", "TxtDataParse", "local_path"]


def local_path(url: str) -> Path:
    """A local path from a plain path or a ``file://`` URL."""
    return Path(urlparse(url).path) if url.startswith("file://") else Path(url)


def _number(text: Any) -> Any:
    """A cell as a number when it is one, else as given (``""`` -> None)."""
    if text is None or isinstance(text, int | float):
        return text
    value = str(text).strip()
    if value == "":
        return None
    try:
        return float(value)
    except ValueError:
        return value


def _label(text: Any) -> Any:
    """A label: an int when it is integral, else its text; None when empty."""
    if text is None:
        return None
    if isinstance(text, int | np.integer):
        return int(text)
    value = str(text).strip()
    if value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() else value


class BaseDataSource:
    """Samples: ``x`` (features), ``y`` (labels, None for test data), and optionally
    ``columns`` (names of ``x``'s columns), ``meta_attr`` (per-sample data attributes, when they
    are not columns of ``x``), ``rows`` (the samples as read, column -> text)."""

    def __init__(self, data_type: str = "train", func: Callable[..., Any] | str | None = None) -> None:
        self.data_type = data_type
        self.process_func: Callable[..., Any] | None = None
        if callable(func):
            self.process_func = func
        elif func:
            self.process_func = ClassFactory.get_cls(ClassType.CALLBACK, func)()
        self.x: Any = None
        self.y: Any = None
        self.meta_attr: list[dict[str, Any]] | None = None
        self.columns: list[str] | None = None
        self.rows: list[dict[str, Any]] | None = None
        self.label: str | None = None
        self.inx: list[int] | None = None
        """Positions of these samples in the source they were taken from (``subset``)."""

    @classmethod
    def from_arrays(
        cls,
        x: Any,
        y: Any = None,
        attrs: Mapping[str, Sequence[Any]] | None = None,
        data_type: str = "train",
        columns: Sequence[str] | None = None,
    ) -> BaseDataSource:
        """A source from arrays; ``attrs`` maps an attribute's name to its value per sample."""
        src = cls(data_type=data_type)
        src.x = np.asarray(x)
        src.y = None if y is None else np.asarray(y)
        src.columns = list(columns) if columns is not None else None
        if attrs:
            n = len(src.x)
            for name, values in attrs.items():
                if len(values) != n:
                    raise ValueError(f"attribute {name!r} has {len(values)} values for {n} samples")
            src.meta_attr = [{name: _plain(values[i]) for name, values in attrs.items()} for i in range(n)]
        return src

    def num_examples(self) -> int:
        return 0 if self.x is None else len(self.x)

    def __len__(self) -> int:
        return self.num_examples()

    @property
    def is_test_data(self) -> bool:
        return self.data_type == "test"

    def parse(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError

    def subset(self, index: Iterable[int]) -> BaseDataSource:
        """The samples at ``index``, in that order, as a new source of the same type."""
        idx = np.asarray(list(index), dtype=int)
        out = BaseDataSource(data_type=self.data_type)
        out.x = None if self.x is None else np.asarray(self.x)[idx]
        out.y = None if self.y is None else np.asarray(self.y)[idx]
        out.columns = self.columns
        out.label = self.label
        out.meta_attr = None if self.meta_attr is None else [self.meta_attr[i] for i in idx]
        out.rows = None if self.rows is None else [self.rows[i] for i in idx]
        base = self.inx if self.inx is not None else list(range(self.num_examples()))
        out.inx = [base[i] for i in idx]
        return out

    def attributes(self, names: Sequence[str]) -> list[dict[str, Any]]:
        """Each sample's values of the data attributes ``names``, from ``meta_attr`` or from the
        columns of ``x``. A name found in neither is refused, naming it."""
        n = self.num_examples()
        if not names:
            return [{} for _ in range(n)]
        out: list[dict[str, Any]] = [{} for _ in range(n)]
        missing = []
        for name in names:
            if self.meta_attr is not None and all(name in m for m in self.meta_attr):
                for i in range(n):
                    out[i][name] = self.meta_attr[i][name]
            elif self.columns is not None and name in self.columns:
                col = self.columns.index(name)
                for i in range(n):
                    out[i][name] = _plain(self.x[i][col])
            else:
                missing.append(name)
        if missing:
            where = f"columns {self.columns}" if self.columns is not None else "no columns"
            raise ValueError(f"the samples have no data attribute {missing} ({where}, no meta_attr)")
        return out

    def features(self, drop: Sequence[str] = ()) -> np.ndarray:
        """``x`` as a float array without the columns named in ``drop`` (the data attributes)."""
        x = np.asarray(self.x)
        if self.columns is not None and drop:
            keep = [i for i, c in enumerate(self.columns) if c not in set(drop)]
            x = x[:, keep] if x.ndim == 2 else x
        try:
            return np.asarray(x, dtype=float)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"the features are not all numbers ({exc}): turn them into numbers in func"
            ) from None

    def row(self, i: int) -> dict[str, Any]:
        """Sample ``i`` as a Dataset line: column -> value, the label column left empty."""
        if self.rows is not None:
            row = dict(self.rows[i])
        elif self.columns is not None:
            row = {c: _plain(v) for c, v in zip(self.columns, np.asarray(self.x)[i], strict=False)}
        else:
            row = {f"f{j}": _plain(v) for j, v in enumerate(np.ravel(np.asarray(self.x)[i]))}
            if self.meta_attr is not None:
                row.update(self.meta_attr[i])
        if self.label:
            row[self.label] = None
        return row


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value (JSON and the sample shapes want plain values)."""
    if isinstance(value, np.generic):
        return value.item()
    return value


class CSVDataParse(BaseDataSource):
    """A csv Dataset file: a header line, then one sample per line.

    ``parse(*files, label="col")``: each argument is a path (``file://`` too), an open text
    stream, or a mapping (one sample, as an inference service receives it). ``func`` (the
    constructor's) gets the list of rows (column -> text) and returns it changed.
    ``usecols`` keeps only those columns (and the label).
    """

    def __init__(self, data_type: str = "train", func: Callable[..., Any] | str | None = None) -> None:
        super().__init__(data_type=data_type, func=func)

    def parse(self, *args: Any, **kwargs: Any) -> None:
        label = kwargs.get("label") or None
        usecols = kwargs.get("usecols") or []
        if isinstance(usecols, str):
            usecols = [c.strip() for c in usecols.split(",") if c.strip()]
        rows: list[dict[str, Any]] = []
        header: list[str] = []
        for source in args:
            if isinstance(source, Mapping):
                part = [dict(source)]
                names = list(source)
            else:
                part, names = _read_csv(source)
            if not header:
                header = names
            rows.extend(part)
        if self.process_func is not None:
            rows = list(self.process_func(rows))
        if usecols:
            keep = [*usecols, *([label] if label and label not in usecols else [])]
            rows = [{c: r.get(c) for c in keep} for r in rows]
            header = keep
        columns = [c for c in (header or (list(rows[0]) if rows else [])) if c != label]
        self.label = label
        self.columns = columns
        self.rows = rows
        self.x = np.array([[_number(r.get(c)) for c in columns] for r in rows], dtype=object).reshape(
            len(rows), len(columns)
        )
        labels = [_label(r.get(label)) for r in rows] if label else []
        if label and not self.is_test_data and any(v is not None for v in labels):
            self.y = np.array(labels, dtype=object if any(v is None for v in labels) else None)
        else:
            self.y = None


def _read_csv(source: Any) -> tuple[list[dict[str, Any]], list[str]]:
    text = source.read() if hasattr(source, "read") else local_path(str(source)).read_text(encoding="utf-8")
    reader = csv.DictReader(io.StringIO(text))
    rows = [dict(r) for r in reader if any((v or "").strip() for v in r.values() if isinstance(v, str))]
    return rows, list(reader.fieldnames or [])


class TxtDataParse(BaseDataSource):
    """A txt Dataset file: ``path [label]`` per line (``x`` the paths, ``y`` the labels).
    ``func`` maps a line to its fields (default: split on white space)."""

    def __init__(self, data_type: str = "train", func: Callable[..., Any] | str | None = None) -> None:
        super().__init__(data_type=data_type, func=func)

    def parse(self, *args: Any, **kwargs: Any) -> None:
        xs: list[Any] = []
        ys: list[Any] = []
        rows: list[dict[str, Any]] = []
        for source in args:
            path = local_path(str(source))
            for line in path.read_text(encoding="utf-8").splitlines():
                if not line.strip():
                    continue
                fields = self.process_func(line.strip()) if self.process_func else line.split()
                if not fields:
                    continue
                xs.append(fields[0])
                rows.append({"path": fields[0]})
                if not self.is_test_data:
                    ys.append(_label(fields[1]) if len(fields) > 1 else None)
        self.x = np.array(xs, dtype=object)
        self.y = np.array(ys, dtype=object) if ys and any(v is not None for v in ys) else None
        self.rows = rows
