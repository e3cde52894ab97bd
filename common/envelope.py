"""The bus envelope (protocol v1): one small versioned map around every message.

Pure data, no I/O. Encoding and decoding live in ``lifelong.common.codec``; topics in
``lifelong.common.topics``. Field names are short but readable, because operators read
envelopes with ``mosquitto_sub`` when the JSON codec is on:

    v     protocol version (always 1 for now)
    id    message id, unique per sender (hex uuid4); acks name it
    node  the edge node the message is about (sender for up, receiver for down)
    kind  resource kind (``LifelongLearningJob``, ``Dataset``, ``Model``, ...) or ``_ctl``
    ns    namespace of the resource ("" for control messages)
    name  name of the resource ("" for control messages)
    op    operation, one of ``Op``
    rv    resourceVersion of the desired state (downstream upserts/deletes), else None
    seq   per-node sequence number of an upstream report, else None
    ts    sender's wall clock, seconds since the epoch
    body  the payload: a JSON-compatible map, or None
"""

from __future__ import annotations

import time
import uuid
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt

PROTOCOL_VERSION = 1
CONTROL_KIND = "_ctl"
MAX_INT = 2**63 - 1
"""The largest integer a message may carry (seqs, counts, rounds): what SQLite's INTEGER and
Go's int64 hold. Larger ones are refused at decode, never reach a database."""
MAX_RV_LENGTH = 64
"""A resourceVersion is opaque, but every store's fits (etcd's is an int64 in decimal)."""


class Op(StrEnum):
    """What a message asks for or reports."""

    UPSERT = "upsert"  # GM -> LC: desired state of one resource (whole object)
    DELETE = "delete"  # GM -> LC: the resource is no longer wanted on this node
    REPORT = "report"  # LC -> GM: status report of one resource (through the outbox)
    HELLO = "hello"  # LC -> GM: on every (re)connect; what the node holds
    ACK = "ack"  # either way: the named messages were applied durably
    SYNC = "sync"  # GM -> LC: the complete list of what the node should hold
    WORKER = "worker"  # GM -> LC: start or stop a worker
    PRESENCE = "presence"  # retained online/offline of a node or of the GM
    LOG = "log"  # GM -> LC: a request for part of a worker's log; LC -> GM: its answer


class Envelope(BaseModel):
    """One bus message. Immutable; build with ``Envelope.new(...)``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: StrictInt = PROTOCOL_VERSION
    id: str = Field(min_length=1, max_length=64)
    node: str = Field(min_length=1, max_length=253)
    kind: str = Field(min_length=1, max_length=63)
    ns: str = Field(default="", max_length=253)
    name: str = Field(default="", max_length=253)
    op: Op
    rv: str | None = Field(default=None, max_length=MAX_RV_LENGTH)
    seq: StrictInt | None = Field(default=None, ge=0, le=MAX_INT)
    ts: Annotated[StrictFloat, Field(allow_inf_nan=False)] | StrictInt
    body: dict[str, Any] | None = None

    @classmethod
    def new(
        cls,
        *,
        node: str,
        kind: str,
        op: Op,
        ns: str = "",
        name: str = "",
        rv: str | None = None,
        seq: int | None = None,
        body: dict[str, Any] | None = None,
        id: str | None = None,
        ts: float | None = None,
    ) -> Envelope:
        return cls(
            id=id or uuid.uuid4().hex,
            node=node,
            kind=kind,
            ns=ns,
            name=name,
            op=op,
            rv=rv,
            seq=seq,
            ts=time.time() if ts is None else ts,
            body=body,
        )

    @property
    def key(self) -> tuple[str, str, str]:
        """The resource this message is about: (kind, namespace, name)."""
        return (self.kind, self.ns, self.name)

    def to_wire(self) -> dict[str, Any]:
        """The plain map that the codecs serialise (None fields left out)."""
        out: dict[str, Any] = {
            "v": self.v,
            "id": self.id,
            "node": self.node,
            "kind": self.kind,
            "ns": self.ns,
            "name": self.name,
            "op": self.op.value,
            "ts": self.ts,
        }
        if self.rv is not None:
            out["rv"] = self.rv
        if self.seq is not None:
            out["seq"] = self.seq
        if self.body is not None:
            out["body"] = self.body
        return out
