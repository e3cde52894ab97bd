"""Appending labelled samples to a Dataset's file, exactly once per (Dataset, sample id).

Who calls it: the service's control loop (``LabelledAppender.step``, first in each control step,
so that the dataset monitor counts the new rows in the same step). The GM sends the internal
kind ``LabelledSamples`` (``lifelong.common.api.labelled``) down to the Dataset's node; the
session stores it like every down object (the hello lists it, a sync that no longer names it
drops it). This module appends its rows to the file of its Dataset (``spec.dataset``, same
namespace, ``spec.nodeName`` this node) and reports ``LabelledSamplesReport{appended,
duplicates, skipped}`` on ``up/LabelledSamples/{ns}/{name}`` through the outbox (docs/protocol.md).

Rows: a ``csv`` Dataset gets one line per sample, its values in the order of the file's header
line (a column the row lacks is empty; a column of the row not in the header is left out), the
label in ``spec.labelColumn`` (the first column when not given), written as Python's ``csv``
module writes (plain values unquoted, numbers as ``str``), as ``lifelong demo`` writes its rows;
a ``txt`` Dataset gets ``<row's path> <label>``. A sample whose row cannot be a line (a value
with a line break; a ``txt`` row without ``path``, a ``txt`` label with blanks) is left out,
logged and counted (``skipped``); the others go on.

Exactly once, across resends, duplicates and crashes:

1. the ids already appended to the Dataset (table ``labelled_ids``) and repeated ids of the batch
   are ``duplicates``;
2. the intent is committed (table ``labelled``: the file's size before, the exact bytes to
   append, the ids), then the bytes are appended and fsynced;
3. one transaction records the ids, marks the batch done at its rv and queues the report.

An intent found without its commit (the LC was killed between 2 and 3, or the outbox was full
at 3) is finished before anything else: if the file holds the bytes after the recorded size,
only step 3 runs; if it holds a part of them (a write cut short), the file is cut back to the
recorded size and the bytes written again; if other writers appended after it, a cut-short part
of ours is taken out and theirs kept. Other writers of the file are assumed to append whole
lines. While a Dataset has an intent pending, its other batches wait.

A batch whose Dataset is not held here (missing, or another node's), whose file is missing or
cannot be read or written, or whose ``labelColumn`` is not in the header, waits: it is tried
again at every control step, logged once per reason and counted
(``lifelong_lc_item_failures_total{loop="labelled"}``), and nothing is lost; the other batches
go on. A batch whose rv is done is not looked at again; its record goes with the object.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from lifelong.common.api import Dataset, parse_resource
from lifelong.common.api.labelled import LabelledSample, LabelledSamples
from lifelong.common.errors import InvalidBody, ValidationError
from lifelong.common.messages import parse_object
from lifelong.edge.dataset_monitor import local_path
from lifelong.edge.db import Store
from lifelong.edge.metrics import ItemFailures
from lifelong.edge.outbox import Outbox, OutboxFull

log = logging.getLogger("lifelong.edge.labelled")

KIND = "LabelledSamples"
DATASET_KIND = "Dataset"
LOOP = "labelled"
HEAD_BYTES = 1 << 20
"""Bytes read from the start of a ``csv`` file to find its header line."""


class Waits(Exception):
    """The batch cannot be appended now (why is the message); it is tried again later."""


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def _has_break(text: str) -> bool:
    return "\n" in text or "\r" in text


def _read_header(path: Path) -> list[str]:
    """The columns of a ``csv`` file's header (its first non-blank line)."""
    with path.open("rb") as fh:
        head = fh.read(HEAD_BYTES)
    for line in head.splitlines():
        if line.strip():
            return next(csv.reader([line.decode("utf-8", errors="replace")]))
    raise Waits(f"{path} has no header line yet")


def render(
    samples: list[LabelledSample], fmt: str, header: list[str] | None, label_column: str | None
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The lines of ``samples`` as (id, line), and the samples left out as (id, why)."""
    lines: list[tuple[str, str]] = []
    skipped: list[tuple[str, str]] = []
    if fmt == "csv":
        assert header is not None
        label_at = header.index(label_column) if label_column is not None else 0
        for sample in samples:
            cells = [_cell(sample.row.get(col)) for col in header]
            cells[label_at] = _cell(sample.label)
            if any(_has_break(c) for c in cells):
                skipped.append((sample.id, "a value holds a line break"))
                continue
            out = io.StringIO()
            csv.writer(out, lineterminator="").writerow(cells)
            lines.append((sample.id, out.getvalue()))
        return lines, skipped
    for sample in samples:
        path, label = sample.row.get("path"), _cell(sample.label)
        if not isinstance(path, str) or not path.strip():
            skipped.append((sample.id, "a txt row needs a 'path'"))
        elif _has_break(path) or not label or any(c.isspace() for c in label):
            skipped.append((sample.id, "its path holds a line break, or its label is empty or holds blanks"))
        else:
            lines.append((sample.id, f"{path} {label}"))
    return lines, skipped


def _end_of(path: Path) -> tuple[int, bool]:
    """The file's size, and whether it is empty or ends with a line break."""
    with path.open("rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return 0, True
        fh.seek(size - 1)
        return size, fh.read(1) == b"\n"


def _common_prefix(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def write_intent(path: Path, size: int, data: bytes) -> str:
    """Make the file hold ``data`` once after offset ``size`` (the intent); fsynced. Returns
    what was done: ``present``, ``appended``, ``redone`` (a cut-short part replaced) or
    ``moved`` (others appended meanwhile; ours after theirs)."""
    with path.open("r+b") as fh:
        end = fh.seek(0, os.SEEK_END)
        tail = b""
        if end > size:
            fh.seek(size)
            tail = fh.read(end - size)
        if tail and data in tail:
            return "present"
        if end < size:
            # replaced or truncated by someone else since the intent: ours goes at its end
            how, keep, at = "moved", b"", end
        elif data.startswith(tail):
            how, keep, at = ("redone" if tail else "appended"), b"", size
        else:
            # others appended after ``size``; a cut-short part of ours, if any, is taken out
            cut = _common_prefix(tail, data)
            how, keep, at = ("moved", tail[cut:], size) if cut else ("moved", b"", end)
        fh.truncate(at)
        if keep:
            fh.seek(at)
            fh.write(keep)
        end = fh.seek(0, os.SEEK_END)
        if end > 0 and not data.startswith(b"\n"):
            fh.seek(end - 1)
            if fh.read(1) != b"\n":  # the last line is not ended: ours start on a line of their own
                fh.seek(end)
                fh.write(b"\n")
        fh.seek(0, os.SEEK_END)
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return how


class LabelledAppender:
    """Appends the held ``LabelledSamples`` batches to their Datasets' files (one thread)."""

    def __init__(self, store: Store, outbox: Outbox, node: str, failures: ItemFailures) -> None:
        self.store = store
        self.outbox = outbox
        self.node = node
        self.failures = failures
        self.samples = {"appended": 0, "duplicates": 0, "skipped": 0}
        self.batches = {"done": 0, "recovered": 0}
        self.waiting = 0  # batches that waited at the last step

    def snapshot(self) -> dict[str, int]:
        return dict(self.samples)

    # -- the loop ------------------------------------------------------------------------------
    def step(self) -> None:
        """Finish pending intents, then append every held batch not done at its rv; forget the
        records of batches no longer held."""
        waiting = 0
        busy: set[tuple[str, str]] = set()  # (ns, dataset) with an intent still pending
        records = {(ns, name): rec for ns, name, rec in self.store.records("labelled")}
        for (ns, name), rec in records.items():
            if rec.get("state") == "intent" and not self._try(ns, name, partial(self._finish, ns, name, rec)):
                busy.add((ns, str(rec.get("dataset"))))
                waiting += 1
        held: set[tuple[str, str]] = set()
        for _k, ns, name, rv, obj in self.store.resources(KIND):
            held.add((ns, name))
            known = records.get((ns, name))
            if known is not None and (known.get("state") == "intent" or known.get("rv") == rv):
                continue
            ds = str((obj.get("spec") or {}).get("dataset"))
            if (ns, ds) in busy:
                waiting += 1
                continue
            if not self._try(ns, name, partial(self._batch, ns, name, rv, obj)):
                waiting += 1
        for ns, name in records.keys() - held:
            gone = self.store.get_record("labelled", ns, name)
            if gone is not None and gone.get("state") != "intent":
                self.store.delete_record("labelled", ns, name)
        self.waiting = waiting

    def _try(self, ns: str, name: str, work: Callable[[], None]) -> bool:
        """Run one batch's work; False if it waits (logged once per reason, counted)."""
        key = f"{ns}/{name}"
        try:
            work()
        except Waits as exc:
            self.failures.failed(LOOP, key, f"waits: {exc}")
            return False
        except OutboxFull as exc:
            self.failures.failed(LOOP, key, f"waits for room in the outbox: {exc}")
            return False
        except (ValidationError, InvalidBody) as exc:
            self.failures.failed(LOOP, key, str(exc))
            return False
        except OSError as exc:
            self.failures.failed(LOOP, key, f"waits: {exc.strerror or exc}")
            return False
        self.failures.ok(LOOP, key)
        return True

    # -- one batch -----------------------------------------------------------------------------
    def _dataset(self, ns: str, name: str) -> Dataset:
        held = self.store.get_resource(DATASET_KIND, ns, name)
        if held is None:
            raise Waits(f"Dataset {ns}/{name} is not held by this node")
        dataset = parse_resource(held[1], source=f"Dataset {ns}/{name}")
        if not isinstance(dataset, Dataset):
            raise ValidationError([("kind", "must be Dataset")], source=f"Dataset {ns}/{name}")
        if dataset.spec.node_name != self.node:
            raise Waits(f"Dataset {ns}/{name} is on node {dataset.spec.node_name}, not this one")
        return dataset

    def _batch(self, ns: str, name: str, rv: str, obj: dict[str, Any]) -> None:
        batch = parse_object(obj)  # InvalidBody if refused (only a damaged database holds one)
        if not isinstance(batch, LabelledSamples):
            raise InvalidBody(f"{KIND} {ns}/{name}", [("kind", f"must be {KIND}")])
        spec = batch.spec
        dataset = self._dataset(ns, spec.dataset)
        path = local_path(dataset.spec.url)
        fmt = dataset.spec.format
        done = self.store.appended_ids(ns, spec.dataset, [s.id for s in spec.samples])
        fresh: list[LabelledSample] = []
        seen: set[str] = set()
        for sample in spec.samples:
            if sample.id not in done and sample.id not in seen:
                fresh.append(sample)
            seen.add(sample.id)
        duplicates = len(spec.samples) - len(fresh)
        if not path.is_file():
            raise Waits(f"the file {path} of Dataset {ns}/{spec.dataset} does not exist")
        header = _read_header(path) if fmt == "csv" else None
        if header is not None and spec.label_column is not None and spec.label_column not in header:
            raise Waits(f"labelColumn {spec.label_column!r} is not a column of {path} ({','.join(header)})")
        lines, skipped = render(fresh, fmt, header, spec.label_column)
        for ident, why in skipped[:10]:
            log.warning("labelled sample %s of %s/%s left out: %s", ident, ns, name, why)
        size, ended = _end_of(path)
        text = ("" if ended else "\n") + "".join(line + "\n" for _, line in lines)
        intent = {
            "state": "intent",
            "rv": rv,
            "dataset": spec.dataset,
            "path": str(path),
            "size": size,
            "text": text,
            "ids": [ident for ident, _ in lines],
            "duplicates": duplicates,
            "skipped": len(skipped),
        }
        if lines:
            with self.store.tx():
                self.store.put_record("labelled", ns, name, intent)
        self._finish(ns, name, intent)

    def _finish(self, ns: str, name: str, intent: dict[str, Any]) -> None:
        """Make the file hold the intent's bytes once, then commit: ids, done, report."""
        ids = [str(i) for i in intent.get("ids") or []]
        from lifelong.common.kb import LabelledSamplesReport  # with the first labelled samples only

        how = "none"
        if ids:
            how = write_intent(Path(intent["path"]), int(intent["size"]), str(intent["text"]).encode())
        report = LabelledSamplesReport(
            appended=len(ids), duplicates=int(intent["duplicates"]), skipped=int(intent.get("skipped") or 0)
        ).to_body()
        with self.store.tx():
            self.store.add_appended_ids(ns, str(intent["dataset"]), ids)
            self.outbox.append(KIND, ns, name, report)
            done = {
                "state": "done",
                "rv": intent["rv"],
                "appended": len(ids),
                "duplicates": report["duplicates"],
            }
            self.store.put_record("labelled", ns, name, done)
        self.samples["appended"] += len(ids)
        self.samples["duplicates"] += int(intent["duplicates"])
        self.samples["skipped"] += int(intent.get("skipped") or 0)
        self.batches["done"] += 1
        if how in ("present", "redone", "moved"):
            self.batches["recovered"] += 1
            log.warning("labelled samples %s/%s: an earlier attempt finished (%s)", ns, name, how)
        log.info(
            "labelled samples %s/%s appended to Dataset %s/%s: %d new, %d duplicates",
            ns,
            name,
            ns,
            intent["dataset"],
            len(ids),
            intent["duplicates"],
        )
