"""The GM API's knowledge-base routes: a job's unseen samples, their labels, its summary.

Who calls it: ``cloud/api_server.py`` routes these paths here (same tokens as the rest of the
API: GET reads, POST writes); ``lifelong kb samples|label|summary`` (``cli/client/kb.py``) and
tests call them:

=====================================================================  =================================
``GET  /api/v1/namespaces/{ns}/lifelonglearningjobs/{job}/kb/samples``  ``{"items": [sample...],
       ``?state=unlabelled|labelled|delivered|all&predicted=X``        "next": ID | null}``: in the order
       ``&limit=N&after=ID``                                           received; ``next`` is the ``after``
                                                                       of the next page
``POST .../kb/labels`` ``{"labels": {"<id>": LABEL}}``                 ``{"labelled": n}``
``POST .../kb/labels`` ``{"predicted": X, "label": Y}``                ``{"labelled": n}``: every
                                                                       unlabelled sample predicted X
``GET  .../kb/summary``                                                the job's ``status.knowledgeBase``
=====================================================================  =================================

A label (and ``predicted``) is a string or a whole number, as JSON says. In the query string
``predicted`` is text: a whole number (``3``) means the number, anything else the string; a
value in double quotes (``"3"``) is always the string.

Errors: 404 for a job that does not exist; 400 naming the field (``state``, ``limit``,
``labels.<id>``...) or the sample the KB refuses (an unknown id, a delivered sample); 503 when
this GM has no knowledge base, or it cannot be reached (nothing was changed). After a label the
service's ``on_labelled`` runs: the labelled samples' delivery starts a pass, and the job's
``status.knowledgeBase`` is refreshed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Self

from pydantic import Field, model_validator

from lifelong.cloud.kb.base import KBRefused, KBUnavailable, KnowledgeBase, SampleState, StoredSample
from lifelong.cloud.stores.base import NotFound, ResourceStore
from lifelong.common.errors import InvalidBody, LifelongError, ValidationError
from lifelong.common.messages import Body
from lifelong.common.samples import Label, SampleId, label_from_text

JOB_KIND = "LifelongLearningJob"
STATES: tuple[SampleState, ...] = ("unlabelled", "labelled", "delivered", "all")
MAX_LIMIT = 10_000
DEFAULT_LIMIT = 1000


class KBOff(LifelongError):
    """This GM runs without a knowledge base (503)."""

    http_status = 503


class KBUnreachable(LifelongError):
    """The knowledge base cannot be reached (503); nothing was changed."""

    http_status = 503


class LabelsRequest(Body):
    """``{"labels": {id: label}}`` or ``{"predicted": X, "label": Y}``."""

    WHAT: ClassVar[str] = "labels request"
    labels: Annotated[dict[SampleId, Label], Field(min_length=1)] | None = None
    predicted: Label | None = None
    label: Label | None = None

    @model_validator(mode="after")
    def _one_form(self) -> Self:
        if self.labels is not None:
            if self.predicted is not None or self.label is not None:
                raise ValueError('give either "labels" or "predicted" with "label", not both')
        elif self.predicted is None or self.label is None:
            raise ValueError('give "labels": {id: label}, or "predicted" and "label"')
        return self


def sample_json(stored: StoredSample) -> dict[str, Any]:
    """One stored sample as the API answers it (camelCase; its sample's fields, then the KB's)."""
    out: dict[str, Any] = dict(stored.sample.to_body())
    out.update(
        {
            "state": stored.state,
            "node": stored.node,
            "received": stored.received,
            "label": stored.label,
            "labelledAt": stored.labelled_at,
            "deliveredAt": stored.delivered_at,
        }
    )
    return out


class KBApi:
    """The routes' logic; ``kb`` None: this GM has none (every route answers 503)."""

    def __init__(
        self,
        store: ResourceStore,
        kb: KnowledgeBase | None,
        *,
        on_labelled: Callable[[str, str], None] | None = None,
    ) -> None:
        self.store = store
        self.kb = kb
        self.on_labelled = on_labelled

    def _kb(self, ns: str, name: str) -> KnowledgeBase:
        if self.store.get(JOB_KIND, ns, name) is None:
            raise NotFound(f'LifelongLearningJob "{name}" not found in namespace {ns}')
        if self.kb is None:
            raise KBOff("this GM has no knowledge base: start lifelong gm with one (docs/knowledge-base.md)")
        return self.kb

    def samples(self, ns: str, name: str, query: dict[str, list[str]]) -> dict[str, Any]:
        state = _one(query, "state") or "all"
        if state not in STATES:
            raise ValidationError([("state", f"must be one of {', '.join(STATES)}, not {state[:40]!r}")])
        limit_text = _one(query, "limit")
        limit = DEFAULT_LIMIT
        if limit_text is not None:
            if not (limit_text.isascii() and limit_text.isdigit()) or not 1 <= int(limit_text) <= MAX_LIMIT:
                raise ValidationError(
                    [("limit", f"must be a whole number from 1 to {MAX_LIMIT}, not {limit_text[:40]!r}")]
                )
            limit = int(limit_text)
        predicted_text = _one(query, "predicted")
        predicted = None if predicted_text is None else label_from_text(predicted_text)
        after = _one(query, "after") or None
        kb = self._kb(ns, name)
        try:
            found = kb.samples(
                f"{ns}/{name}",
                state=state,
                predicted=predicted,
                limit=limit,
                after=after,
            )
        except KBUnavailable as exc:
            raise KBUnreachable(f"the knowledge base cannot be reached: {exc}") from None
        except KBRefused as exc:
            raise ValidationError([("", f"the knowledge base refused: {exc}")]) from None
        items = [sample_json(s) for s in found]
        return {"items": items, "next": items[-1]["id"] if len(items) == limit else None}

    def label(self, ns: str, name: str, body: Any) -> dict[str, Any]:
        try:
            request = LabelsRequest.parse(body)
        except InvalidBody as exc:
            raise ValidationError(exc.errors, source=exc.what) from None
        kb = self._kb(ns, name)
        job = f"{ns}/{name}"
        try:
            if request.labels is not None:
                count = kb.label(job, request.labels)
            else:
                assert request.predicted is not None and request.label is not None
                count = kb.label_predicted(job, request.predicted, request.label)
        except KBUnavailable as exc:
            raise KBUnreachable(
                f"the knowledge base cannot be reached (nothing was labelled): {exc}"
            ) from None
        except KBRefused as exc:
            raise ValidationError(
                [("labels", f"the knowledge base refused (nothing was labelled): {exc}")]
            ) from None
        if count and self.on_labelled is not None:
            self.on_labelled(ns, name)
        return {"labelled": count}

    def summary(self, ns: str, name: str) -> dict[str, Any]:
        kb = self._kb(ns, name)
        try:
            summary = kb.summary(f"{ns}/{name}")
        except KBUnavailable as exc:
            raise KBUnreachable(f"the knowledge base cannot be reached: {exc}") from None
        result: dict[str, Any] = summary.model_dump(mode="json", by_alias=True, exclude_none=True)
        return result


def _one(query: dict[str, list[str]], field: str) -> str | None:
    values = query.get(field)
    if not values:
        return None
    if len(values) > 1:
        raise ValidationError([(field, "give it once")])
    return values[0]
