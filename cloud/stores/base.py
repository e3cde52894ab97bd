"""The interface every GM resource store implements (SQLite standalone, Kubernetes CRDs).

Objects are plain dicts in their wire form (camelCase, as ``kubectl get -o json`` shows
them): ``apiVersion``, ``kind``, ``metadata`` (with ``resourceVersion``), ``spec``,
``status``. Validation against the API models happens before an object reaches a store.

Kinds: ``LifelongLearningJob``, ``Dataset``, ``Model`` everywhere; ``Worker`` (the internal
kind that tells an LC to run a worker process, see docs/protocol.md) in standalone mode.

Threading: every method may be called from any thread. ``watch`` blocks its calling thread
until ``stop`` is set; it first delivers an ``ADDED`` event for every existing object (the
list), then every change in commit order, so a controller is level-triggered from the start.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from lifelong.common.errors import LifelongError

Object = dict[str, Any]
EventType = Literal["ADDED", "MODIFIED", "DELETED"]


class StoreError(LifelongError):
    """A store operation failed."""


class NotFound(StoreError):
    exit_code = 1


class Conflict(StoreError):
    """The object changed since the resourceVersion the caller read (retry with a fresh read)."""


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: EventType
    object: Object

    @property
    def key(self) -> tuple[str, str, str]:
        meta = self.object.get("metadata", {})
        return (str(self.object.get("kind")), str(meta.get("namespace", "default")), str(meta.get("name")))


class ResourceStore(Protocol):
    """What the controllers need from a store."""

    def get(self, kind: str, namespace: str, name: str) -> Object | None:
        """The object, or None when it does not exist."""

    def list(self, kind: str, namespace: str | None = None) -> Sequence[Object]:
        """All objects of a kind (in one namespace, or all namespaces when None)."""

    def apply(self, obj: Object) -> Object:
        """Create the object, or replace its spec/labels/annotations; never touches status.

        Returns the stored object with ``metadata.resourceVersion``, ``uid`` and
        ``creationTimestamp`` filled in. An unchanged spec does not bump the version.
        """

    def update_status(
        self, kind: str, namespace: str, name: str, status: Object, *, resource_version: str | None = None
    ) -> Object:
        """Replace the status. With ``resource_version``, raise ``Conflict`` if it is not current.

        Raises ``NotFound`` when the object does not exist.
        """

    def delete(self, kind: str, namespace: str, name: str) -> Object | None:
        """Delete the object; return what was deleted, or None if it did not exist."""

    def watch(self, handler: Callable[[WatchEvent], None], *, stop: threading.Event) -> None:
        """List then stream changes of every kind into ``handler`` until ``stop`` is set."""

    def close(self) -> None:
        """Release connections and files."""
