"""What every controller offers the service, what it may call on the delivery, and the outcome
of applying a report.

Who uses it: ``cloud/controllers/registry.py`` (controllers by kind), ``cloud/intake.py``
(parsing and applying reports), the service's store watch (``on_event``), and the controllers
themselves (``Sender``: the part of ``cloud/delivery.py`` they are handed, so that they never
import the bus side).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from lifelong.cloud.stores.base import Object, WatchEvent
from lifelong.common.envelope import Envelope
from lifelong.common.errors import ProtocolError

Key = tuple[str, str, str]
R = TypeVar("R")
"""The model of a controller's report body (``DatasetReport``, ``JobReport``, ``WorkerReport``)."""


class Outcome(StrEnum):
    APPLIED = "applied"  # the report changed stored state
    DUPLICATE = "duplicate"  # already applied, stale, or nothing to change; acknowledged


class ReportRejected(ProtocolError):
    """A report that can never be applied (unknown resource, wrong node, illegal event).

    Counted by ``reason`` and acknowledged, so that the LC stops resending it. (A body the
    models refuse never reaches a controller: the intake refuses it as ``invalid``.)
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ReportDeferred(ProtocolError):
    """A report that cannot be applied *now* but will be later (the knowledge base cannot be
    reached, or this GM has none): counted by ``reason`` and logged, **not** acknowledged, so
    that the LC keeps it in its outbox and resends it. Nothing of it is stored."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Sender(Protocol):
    """What a controller asks of the downstream delivery (``cloud/delivery.py``'s ``Delivery``)."""

    def want(
        self,
        key: Key,
        nodes: Iterable[str],
        obj: Object,
        *,
        include_status: bool = True,
        then: Callable[[], None] | None = None,
    ) -> None:
        """``nodes`` should hold ``obj`` at its version; any other node that held it gets a delete.
        ``then`` is called once that has run (after the commit, when the caller's sends are held
        back until its transaction commits); not if it raised."""

    def gone(self, key: Key, rv: str) -> None:
        """The object was deleted at version ``rv``: every node that held it gets a delete."""


class Controller(Protocol[R]):
    """A controller of one kind; ``R`` is the model of that kind's report body."""

    kind: str

    def on_event(self, event: WatchEvent) -> None:
        """A store change of an object of this kind (runs on the object's work queue)."""

    def parse_report(self, body: Any) -> R:
        """The model of a report body of this kind; ``InvalidBody`` (naming the field) if refused.

        Called by the intake at the door, once per report, before anything else sees the body."""

    def report_key(self, env: Envelope, report: R) -> Key:
        """The work-queue key a report is applied under (the object whose state it changes)."""

    def apply_report(self, node: str, env: Envelope, report: R) -> Outcome:
        """Apply one upstream report durably; raise ``ReportRejected`` if it never can be.

        A controller whose class sets ``bursts = True`` promises that this writes only the
        store and the GM's bookkeeping (``GMState``), never the delivery, the knowledge base or
        anything that waits for another thread: the intake may then call it inside a burst's
        transaction of both databases, and roll it back alone (``cloud/intake.py``)."""
