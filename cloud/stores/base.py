"""The interface every GM resource store implements (SQLite standalone, Kubernetes CRDs).

Objects are plain dicts in their wire form (camelCase, as ``kubectl get -o json`` shows
them): ``apiVersion``, ``kind``, ``metadata`` (with ``resourceVersion``), ``spec``,
``status``. That is the store's boundary: the GM API validates an object into its model before
it reaches a store, and what comes out of a store is parsed into its model once, here
(``parse``, ``read``) or by the watch (``WatchEvent.model``), before the controllers see it.

Kinds: ``LifelongLearningJob``, ``Dataset``, ``Model`` everywhere; ``Worker`` (the internal
kind that tells an LC to run a worker process, see docs/protocol.md) in standalone mode.

Threading: every method may be called from any thread. ``watch`` blocks its calling thread
until ``stop`` is set; it first delivers an ``ADDED`` event for every existing object (the
list), then every change in commit order, so a controller is level-triggered from the start.
Each event carries the object's model; an object the models refuse (on Kubernetes anyone may
write a custom object the CRD accepts but the models do not; an older GM may have stored one)
arrives as an event with ``refused`` set to the reason and no model, never as a dict.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from lifelong.common.api import DEFAULT_NAMESPACE, ApiModel, StoredResource, parse_stored
from lifelong.common.errors import LifelongError, ValidationError

Object = dict[str, Any]
EventType = Literal["ADDED", "MODIFIED", "DELETED"]
Key = tuple[str, str, str]
ModelT = TypeVar("ModelT", bound=StoredResource)


class StoreError(LifelongError):
    """A store operation failed."""


class NotFound(StoreError):
    exit_code = 1


class Conflict(StoreError):
    """The object changed since the resourceVersion the caller read (retry with a fresh read)."""


class Refused(StoreError):
    """A stored object the models refuse; ``str()`` names the fields and what is wrong."""

    def __init__(self, key: Key, error: ValidationError) -> None:
        super().__init__(f"{key[0]} {key[1]}/{key[2]}: {error}")
        self.key = key
        self.reason = "; ".join(f"{path}: {message}" if path else message for path, message in error.errors)


def wire_key(obj: Object) -> Key:
    """``(kind, namespace, name)`` of a stored object in wire form (what identifies it even when
    the models refuse the rest)."""
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    return (str(obj.get("kind")), str(meta.get("namespace") or DEFAULT_NAMESPACE), str(meta.get("name")))


def parse(obj: Object) -> StoredResource:
    """The model of a stored object; ``Refused`` (with its key and the reason) if the models refuse it."""
    try:
        return parse_stored(obj)
    except ValidationError as exc:
        raise Refused(wire_key(obj), exc) from None


def read(store: ResourceStore, cls: type[ModelT], namespace: str, name: str) -> ModelT | None:
    """The object of ``cls``'s kind as its model, None when it does not exist; ``Refused`` when
    the models refuse it."""
    obj = store.get(cls.KIND, namespace, name)
    return None if obj is None else _parse_as(cls, obj)


def _parse_as(cls: type[ModelT], obj: Object) -> ModelT:
    model = parse(obj)
    if not isinstance(model, cls):
        raise Refused(wire_key(obj), ValidationError([("kind", f"is {model.kind}, not {cls.KIND}")]))
    return model


class ModelCache:
    """The models of stored objects, by key and resourceVersion, so that a hot path parses each
    version of an object once: every report from the edge reads its job (and the job's Dataset)
    to check it, and a job changes far less often than reports arrive.

    ``read`` still reads the store every time (the version is the store's, never guessed); only
    the parse is saved. Bounded: past ``limit`` entries it starts over. Thread-safe. The models it
    returns are shared between callers: read them, never change them (the controllers write
    through the store and parse what it returns).
    """

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._entries: dict[tuple[str, str, str], tuple[str, StoredResource]] = {}
        self._lock = threading.Lock()

    def put(self, key: tuple[str, str, str], rv: str, model: StoredResource) -> None:
        """Remember ``model`` as the parse of ``key`` at version ``rv`` (the store's watch parsed
        it already: the reconcile it causes then reads it without parsing it again)."""
        if not rv:
            return
        with self._lock:
            if len(self._entries) >= self.limit:
                self._entries.clear()
            self._entries[key] = (rv, model)

    def get(self, key: tuple[str, str, str], rv: str) -> StoredResource | None:
        """The model of ``key`` at version ``rv`` if it was parsed before, else None."""
        with self._lock:
            hit = self._entries.get(key)
        return hit[1] if hit is not None and rv and hit[0] == rv else None

    def read(self, store: ResourceStore, cls: type[ModelT], namespace: str, name: str) -> ModelT | None:
        """As :func:`read`, from the cache when the stored version was parsed before (the store
        is still asked for its version every time, and not made to decode an object the cache
        holds at that version: ``ResourceStore.get_changed``)."""
        key = (cls.KIND, namespace, name)
        with self._lock:
            hit = self._entries.get(key)
        found = store.get_changed(cls.KIND, namespace, name, hit[0] if hit is not None else None)
        if found is None:
            return None
        rv, obj = found
        if obj is None:  # still the cached version (the only one get_changed answers so for)
            assert hit is not None and isinstance(hit[1], cls)
            return hit[1]
        model = _parse_as(cls, obj)
        self.put(key, rv, model)
        return model


def wire(model: ApiModel) -> Object:
    """The wire form of a model (or of a part of one, a status), as a store keeps it and the bus
    carries it: camelCase, no nulls."""
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change of one stored object, as the controllers receive it.

    ``model`` is the object parsed into its model, once, by the store's watch. It is None when the
    models refuse the object (``refused`` says why) and for a ``DELETED`` the store only knows
    the key of (a re-list found it gone).
    """

    type: EventType
    key: Key
    resource_version: str = ""
    model: StoredResource | None = None
    refused: str | None = None
    generation: int | None = None
    """The spec generation of the object (also of a refused one), when the store keeps one."""

    @classmethod
    def of(cls, type_: EventType, obj: Object, models: ModelCache | None = None) -> WatchEvent:
        """The event of ``obj`` in wire form: its model, or the reason the models refuse it.
        ``models``: where a version parsed before is taken from instead of parsing it again (a
        controller's own write: it parsed what the store returned)."""
        meta = obj.get("metadata")
        meta = meta if isinstance(meta, dict) else {}
        generation = meta.get("generation")
        version = str(meta.get("resourceVersion") or "")
        known = models.get(wire_key(obj), version) if models is not None else None
        if known is not None:
            return cls(type_, known.key, version, known, generation=known.metadata.generation)
        try:
            model = parse(obj)
        except Refused as exc:
            return cls(
                type_,
                exc.key,
                version,
                refused=exc.reason,
                generation=generation if isinstance(generation, int) else None,
            )
        return cls(type_, model.key, version, model, generation=model.metadata.generation)

    @classmethod
    def gone(cls, key: Key, resource_version: str = "") -> WatchEvent:
        """A ``DELETED`` event of an object known only by its key."""
        return cls("DELETED", key, resource_version)


class ResourceStore(Protocol):
    """What the controllers need from a store."""

    def get(self, kind: str, namespace: str, name: str) -> Object | None:
        """The object, or None when it does not exist."""

    def get_changed(
        self, kind: str, namespace: str, name: str, known: str | None
    ) -> tuple[str, Object | None] | None:
        """As ``get``, for a caller that holds version ``known`` of the object already: None when
        it does not exist, else its version and the object, or None for the object when it is
        still at ``known`` (a store that can tell so cheaply need not read or decode it)."""

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

    def watch(
        self,
        handler: Callable[[WatchEvent], None],
        *,
        stop: threading.Event,
        models: ModelCache | None = None,
    ) -> None:
        """List then stream changes of every kind into ``handler`` until ``stop`` is set. An
        object whose version ``models`` holds is not parsed again (``WatchEvent.of``)."""

    def close(self) -> None:
        """Release connections and files."""
