"""A ``KnowledgeBase`` (``lifelong.cloud.kb.base``) for the GM's tests.

Who uses it: the tests of the GM's knowledge-base parts (the ``UnseenSamples`` and
``LabelledSamples`` controllers, the labelled samples' delivery, ``status.knowledgeBase``, the
GM API's ``kb`` routes and ``lifelong kb``). ``make_kb(path)`` gives the knowledge base those
tests use.

Interim: the KB service (``LocalKnowledgeBase``) is written beside this part, so until it is
merged ``make_kb`` returns ``InterimInMemoryKB``, a minimal in-memory class that keeps to the
Protocol's documented behaviour and nothing more (no index, no models, no files). At merge
``make_kb`` returns the real ``LocalKnowledgeBase`` on ``path`` and this class goes away.
``SwitchableKB`` wraps any knowledge base so that a test can make it raise ``KBUnavailable``, as
one that cannot be reached would (it stays valid with the real one).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lifelong.cloud.kb.base import KBRefused, KBUnavailable, KnowledgeBase, SampleState, StoredSample
from lifelong.common.api.lifelonglearningjob import AIClasses, Samples
from lifelong.common.api.lifelonglearningjob import KnowledgeBase as KBStatus
from lifelong.common.kb import UnseenSample
from lifelong.common.samples import Label


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class InterimInMemoryKB:
    """Unseen samples and their labels in a dict, per the ``KnowledgeBase`` Protocol (interim)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._samples: dict[str, dict[str, StoredSample]] = {}  # job -> id -> sample, in order received
        self._label_order: list[tuple[str, str]] = []  # (job, id), oldest label first

    def add_unseen(self, job: str, node: str, samples: Sequence[UnseenSample]) -> int:
        with self._lock:
            held = self._samples.setdefault(job, {})
            new = 0
            for sample in samples:
                if sample.id not in held:
                    held[sample.id] = StoredSample(job=job, node=node, sample=sample, received=_now())
                    new += 1
            return new

    def samples(
        self,
        job: str,
        *,
        state: SampleState = "all",
        predicted: Label | None = None,
        limit: int = 1000,
        after: str | None = None,
    ) -> list[StoredSample]:
        with self._lock:
            items = list(self._samples.get(job, {}).values())
            if after is not None:
                ids = [s.sample.id for s in items]
                items = items[ids.index(after) + 1 :] if after in ids else []
            return [
                s
                for s in items
                if state in ("all", s.state) and (predicted is None or s.sample.predicted == predicted)
            ][:limit]

    def label(self, job: str, labels: Mapping[str, Label]) -> int:
        with self._lock:
            held = self._samples.get(job, {})
            for sid in labels:
                if sid not in held:
                    raise KBRefused(f"job {job} has no unseen sample {sid!r}")
                if held[sid].delivered_at is not None:
                    raise KBRefused(f"sample {sid!r} of job {job} was delivered already; it keeps its label")
            for sid, label in labels.items():
                held[sid] = replace(held[sid], label=label, labelled_at=_now())
                if (job, sid) in self._label_order:
                    self._label_order.remove((job, sid))
                self._label_order.append((job, sid))
            return len(labels)

    def label_predicted(self, job: str, predicted: Label, label: Label) -> int:
        ids = [s.sample.id for s in self.samples(job, state="unlabelled", predicted=predicted, limit=10**9)]
        return self.label(job, dict.fromkeys(ids, label)) if ids else 0

    def undelivered(self, limit: int = 1000) -> list[StoredSample]:
        with self._lock:
            out = [self._samples[job][sid] for job, sid in self._label_order]
            return [s for s in out if s.state == "labelled"][:limit]

    def mark_delivered(self, job: str, ids: Sequence[str]) -> int:
        with self._lock:
            held = self._samples.get(job, {})
            changed = 0
            for sid in ids:
                sample = held.get(sid)
                if sample is not None and sample.label is not None and sample.delivered_at is None:
                    held[sid] = replace(sample, delivered_at=_now())
                    changed += 1
            return changed

    def summary(self, job: str) -> KBStatus:
        with self._lock:
            items = list(self._samples.get(job, {}).values())
            labels = sorted({str(s.label) for s in items if s.label is not None})
            return KBStatus(
                ai_classes=AIClasses(number_of_ai_classes=len(labels), list_of_ai_classes=labels or None),
                samples=Samples(
                    number_of_unseen_sample=len(items),
                    number_of_labeled_unseen_sample=sum(1 for s in items if s.label is not None),
                ),
            )


class SwitchableKB:
    """``inner`` as it is while ``available``; otherwise every call of its methods raises
    ``KBUnavailable`` and changes nothing. ``calls`` counts the calls by method name."""

    def __init__(self, inner: KnowledgeBase) -> None:
        self.inner = inner
        self.available = True
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.inner, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            if not self.available:
                raise KBUnavailable("the knowledge base cannot be reached (a test switched it off)")
            return method(*args, **kwargs)

        return call


def make_kb(path: Path) -> KnowledgeBase:
    """The knowledge base the GM's tests use (``path``: a directory for it; unused by the
    interim class)."""
    return InterimInMemoryKB()
