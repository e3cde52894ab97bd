"""What the GM needs of the knowledge base, whether it runs in the GM's process or elsewhere.

Who calls it: the GM's ``UnseenSamples`` controller (stores what the edges found), the labelled
samples' delivery (sends labelled samples to the Dataset's node, then marks them delivered), the
job controller (keeps ``status.knowledgeBase``), the GM API's ``kb`` routes (``lifelong kb
samples`` and ``lifelong kb label``) and the web console (``cloud/console``: task groups, models,
metrics per round, transfers). Two implementations: the KB service's own (in process) and
an HTTP client of its native API (``lifelong gm --kb-url``).

Jobs are named ``namespace/name``. Every method is durable when it returns: a sample stored or a
label given survives a crash of the KB right after. A KB that cannot be reached raises
``KBUnavailable`` (the caller retries later: an unseen-samples report is then not acknowledged,
so the LC resends it); a request the KB refuses raises ``KBRefused`` with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from lifelong.common.api.lifelonglearningjob import KnowledgeBase as KBStatus
from lifelong.common.errors import LifelongError
from lifelong.common.kb import UnseenSample
from lifelong.common.samples import Label

SampleState = Literal["unlabelled", "labelled", "delivered", "all"]


class KBUnavailable(LifelongError):
    """The KB cannot be reached or failed; nothing was changed, try again later."""


class KBRefused(LifelongError):
    """The KB refused the request (an unknown job or sample, a bad label); says why."""


@dataclass(frozen=True, slots=True)
class StoredSample:
    """An unseen sample as the KB keeps it."""

    job: str
    node: str
    sample: UnseenSample
    received: str
    """RFC 3339, when the KB stored it."""
    label: Label | None = None
    labelled_at: str | None = None
    delivered_at: str | None = None

    @property
    def state(self) -> SampleState:
        if self.delivered_at is not None:
            return "delivered"
        return "labelled" if self.label is not None else "unlabelled"


class KnowledgeBase(Protocol):
    def add_unseen(self, job: str, node: str, samples: Sequence[UnseenSample]) -> int:
        """Store the samples (idempotent per (job, sample id): a sample sent again changes
        nothing); return how many were new."""
        ...

    def samples(
        self,
        job: str,
        *,
        state: SampleState = "all",
        predicted: Label | None = None,
        limit: int = 1000,
        after: str | None = None,
    ) -> list[StoredSample]:
        """The job's unseen samples in the order received, at most ``limit`` after the id
        ``after`` (for paging)."""
        ...

    def label(self, job: str, labels: Mapping[str, Label]) -> int:
        """Label the samples named (id -> label); return how many were labelled. An unknown id
        raises ``KBRefused`` naming it, and nothing is labelled. Relabelling a sample that was
        not delivered yet replaces its label; a delivered one is refused."""
        ...

    def label_predicted(self, job: str, predicted: Label, label: Label) -> int:
        """Label every unlabelled sample of the job whose predicted class is ``predicted``."""
        ...

    def undelivered(self, limit: int = 1000) -> list[StoredSample]:
        """Labelled samples not yet delivered to their Dataset's node, oldest label first."""
        ...

    def mark_delivered(self, job: str, ids: Sequence[str]) -> int:
        """Record that these samples reached the Dataset's file; return how many changed."""
        ...

    def summary(self, job: str) -> KBStatus:
        """``status.knowledgeBase`` of the job: its models, classes and sample counts."""
        ...

    def tasks(self, job: str) -> dict[str, Any]:
        """The job's task groups as its latest task index left them: ``{"job", "version",
        "taskGroups": [{"entry", "deployed", "sampleNum", "taskNum", "tasks": [{"entry", "attrs",
        "transferRatio", "samples"}], "model": {"url", "format", "metrics", "classes",
        "indexVersion"} | None, "transfer": {"from", "ratio"} | None}]}`` (the native API's
        ``GET /tasks/{ns}/{job}``). A job the KB knows nothing of raises ``KBRefused``."""
        ...

    def metrics(self, job: str) -> dict[str, Any]:
        """The job's metrics per round: ``{"job", "tasks": [...], "rounds": [...], "scores":
        {"<round>": {task: {"train"|"eval": {metric: value}}}}}`` (the native API's ``GET
        /metrics/{ns}/{job}``). A job the KB knows nothing of raises ``KBRefused``."""
        ...
