"""What every controller offers the service, and the outcome of applying a report.

Who uses it: ``cloud/controllers/registry.py`` (controllers by kind), ``cloud/intake.py``
(applying reports) and the service's store watch (``on_event``).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

from lifelong.cloud.stores.base import WatchEvent
from lifelong.common.envelope import Envelope
from lifelong.common.errors import ProtocolError

Key = tuple[str, str, str]


class Outcome(StrEnum):
    APPLIED = "applied"  # the report changed stored state
    DUPLICATE = "duplicate"  # already applied, stale, or nothing to change; acknowledged


class ReportRejected(ProtocolError):
    """A report that can never be applied (bad body, unknown resource, illegal event).

    Counted by ``reason`` and acknowledged, so that the LC stops resending it.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Controller(Protocol):
    kind: str

    def on_event(self, event: WatchEvent) -> None:
        """A store change of an object of this kind (runs on the object's work queue)."""

    def report_key(self, env: Envelope) -> Key:
        """The work-queue key a report is applied under (the object whose state it changes)."""

    def apply_report(self, node: str, env: Envelope) -> Outcome:
        """Apply one upstream report durably; raise ``ReportRejected`` if it never can be."""
