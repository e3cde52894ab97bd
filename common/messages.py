"""Models of the protocol bodies (docs/protocol.md): what each bus message carries in ``body``.

Who calls it: the LC's session and worker API parse every body they receive with these models
(``Model.parse(body)``) and build every body they send with them (``.to_body()``); the GM may
do the same (until it does, it parses the same dicts by hand, so the wire form is fixed:
``to_body()`` gives exactly the map a peer sends today, key order and nulls included).

Policy, the same for every body:

* a wrong type is refused, never coerced (``"seqs": ["1"]`` is not a list of integers), with an
  ``InvalidBody`` error that names the field (``resources[0].kind: Input should be a valid
  string``);
* a field this version does not know is ignored, so a newer peer that adds one does not break
  an older one.

A body that lists many items (a ``sync``'s resources, an ``ack``'s seqs) may be parsed item by
item with ``parse_lenient``: the items the model refuses are returned apart, each with its
error, so one bad item is counted and skipped and the others still apply.

A ``hello`` or ``sync`` too long for one message goes in parts (``split_to_fit`` sizes them from
the payload limit); ``PartGatherer`` gathers them at the receiver, refusing with ``PartRefused``
(its ``reason``) a part that cannot join.

The downstream ``upsert`` carries a whole resource; ``parse_object`` parses it into its model
in ``lifelong.common.api`` (``LifelongLearningJob``, ``Dataset``, ``Worker``).

Building a body is constructing its model with Python names and calling ``to_body()``:
``JobReady(stage=Stage.TRAIN, round=3, data={...}).to_body()``,
``WorkerReport(job=..., stage=..., round=..., phase="Failed", exit_code=3).to_body()``,
``DatasetReport(number_of_samples=10, update_time=format_time(now)).to_body()``.
"""

from __future__ import annotations

import inspect
import threading
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Generic, Literal, Self, TypeAlias, TypeVar, get_args

import pydantic
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StrictBool,
    StrictInt,
    StrictStr,
    TypeAdapter,
    model_validator,
)
from pydantic.alias_generators import to_camel

from lifelong.common.api.dataset import Dataset
from lifelong.common.api.labelled import LabelledSamples
from lifelong.common.api.lifelonglearningjob import LifelongLearningJob
from lifelong.common.api.loader import format_path, parse_resource
from lifelong.common.api.meta import DnsLabel, DnsSubdomain
from lifelong.common.api.worker import Worker
from lifelong.common.envelope import MAX_INT
from lifelong.common.errors import InvalidBody, PayloadTooLarge, ProtocolError, ValidationError
from lifelong.common.stages import Stage
from lifelong.common.statemachine import parse_time

_MESSAGES = {
    "model_type": "Input should be a mapping",
    "model_attributes_type": "Input should be a mapping",
    "dict_type": "Input should be a mapping",
}


def _errors(exc: pydantic.ValidationError, prefix: tuple[int | str, ...] = ()) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        msg = _MESSAGES.get(err["type"], err["msg"])
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        out.append((format_path(prefix + tuple(err["loc"])), msg))
    return out


def _rfc3339(value: str) -> str:
    parse_time(value)  # ValueError names the value
    return value


Rfc3339 = Annotated[StrictStr, AfterValidator(_rfc3339)]
"""An RFC 3339 time with a zone, kept as the string given."""
NonNegative = Annotated[StrictInt, Field(ge=0, le=MAX_INT)]
ExitCode = Annotated[StrictInt, Field(ge=-(2**31), le=2**31 - 1)]
Name = Annotated[StrictStr, Field(min_length=1)]

# Bodies are read by their wire (camelCase) names only; Python code builds them by field name.
# (``by_name`` of the validate functions exists from pydantic 2.11 on; older ones accept both.)
_WIRE_NAMES_ONLY: dict[str, Any] = (
    {"by_alias": True, "by_name": False}
    if "by_name" in inspect.signature(pydantic.BaseModel.model_validate).parameters
    else {}
)


class Body(BaseModel):
    """Base of every body: camelCase on the wire, unknown fields ignored, wrong types refused.

    Built when first used (``defer_build``): a process builds only the bodies it handles."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True, defer_build=True
    )

    WHAT: ClassVar[str] = "body"
    """How error messages name this body (``sync body``, ``hello body``...)."""
    OMIT_IF_NONE: ClassVar[frozenset[str]] = frozenset()
    """Optional fields left out of ``to_body()`` when None (the others are sent as null)."""

    @classmethod
    def parse(cls, body: Any) -> Self:
        """The model of ``body``; ``InvalidBody`` names every field that is wrong."""
        if not isinstance(body, Mapping):
            what = "null" if body is None else type(body).__name__
            raise InvalidBody(cls.WHAT, [("", f"must be a mapping, got {what}")])
        try:
            return cls.model_validate(body, **_WIRE_NAMES_ONLY)
        except pydantic.ValidationError as exc:
            raise InvalidBody(cls.WHAT, _errors(exc)) from None

    def to_body(self) -> dict[str, Any]:
        """The wire map, exactly as peers send it (declared field order, nulls kept)."""
        out = self.model_dump(mode="json", by_alias=True)
        for name in self.OMIT_IF_NONE:
            field = type(self).model_fields[name]
            key = field.alias or name
            if out.get(key, 0) is None:
                del out[key]
        return out


class ItemRefused(Exception):
    """One item of a list body that its model refused: where (``resources[3]``) and why."""

    def __init__(self, path: str, errors: list[tuple[str, str]], key: str, item: Any) -> None:
        self.path = path
        self.item = item
        self.errors = errors
        self.key = key
        detail = "; ".join(f"{p}: {m}" if p else m for p, m in errors)
        super().__init__(f"{detail} (item {key})" if key else detail)


def _item_key(item: Any) -> str:
    """What a refused item seems to be about, for the log line (best effort, short)."""
    if isinstance(item, Mapping):
        parts = [str(item.get(k))[:80] for k in ("kind", "ns", "name") if k in item]
        return "/".join(parts)
    return repr(item)[:80]


# -- shared pieces ---------------------------------------------------------------------------------


class ResourceRef(Body):
    """One resource a node holds (hello) or should hold (sync), at its version."""

    WHAT = "resource"
    kind: Name
    ns: StrictStr
    name: Name
    rv: StrictStr

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.ns, self.name)


class ListBody(Body):
    """A body whose main content is one list of items (see ``parse_lenient``)."""

    ITEMS: ClassVar[str] = ""

    @classmethod
    def item_adapter(cls) -> TypeAdapter[Any]:
        """Validates one item of the list field."""
        adapter = _ITEM_ADAPTERS.get(cls)
        if adapter is None:
            (item_type,) = get_args(cls.model_fields[cls.ITEMS].annotation)
            adapter = _ITEM_ADAPTERS[cls] = _adapter(item_type, item_type)
        return adapter

    @classmethod
    def parse_lenient(cls, body: Any) -> tuple[Self, list[ItemRefused]]:
        """Parse a list body item by item: the model with the good items, and the refused ones.

        The body itself (a mapping, its other fields, the list being a list) must be right, or
        ``InvalidBody`` is raised as by ``cls.parse``.
        """
        field = cls.ITEMS
        alias = cls.model_fields[field].alias or field
        if not isinstance(body, Mapping):
            return cls.parse(body), []  # raises
        items = body.get(alias)
        if not isinstance(items, list):
            return cls.parse(body), []  # a missing or non-list field: parse names it (or it is valid)
        outer = cls.parse({**body, alias: []})
        adapter = cls.item_adapter()
        good: list[Any] = []
        refused: list[ItemRefused] = []
        for index, item in enumerate(items):
            try:
                good.append(adapter.validate_python(item, **_WIRE_NAMES_ONLY))
            except pydantic.ValidationError as exc:
                path = f"{alias}[{index}]"
                refused.append(ItemRefused(path, _errors(exc, (alias, index)), _item_key(item), item))
        return outer.model_copy(update={field: good}), refused


_ITEM_ADAPTERS: dict[type[ListBody], TypeAdapter[Any]] = {}


def _adapter(adapted: Any, *models: Any) -> TypeAdapter[Any]:
    """A ``TypeAdapter`` of ``adapted``, made after the ``models`` in it are built.

    The models are built on first use (``defer_build``), and pydantic builds a model under its
    rebuild lock; a ``TypeAdapter`` made over a model not yet built would generate the model's
    schema itself, outside that lock, reading the class while another thread's first use of
    the model may be writing it. Built first, the model's schema is reused as it is."""
    for model in models:
        if isinstance(model, type) and issubclass(model, pydantic.BaseModel):
            model.model_rebuild()  # nothing to do when built; under pydantic's lock otherwise
    return TypeAdapter(adapted)


# -- control messages ------------------------------------------------------------------------------


class Presence(Body):
    """``presence`` (retained): online or offline, and who says it."""

    WHAT = "presence body"
    state: Literal["online", "offline"]
    agent: StrictStr = ""


class OutboxState(Body):
    """The outbox part of a hello: depth, lowest unacknowledged seq (null if empty), next seq.

    A field the hello leaves out is None, "not said" (``lifelong nodes`` shows ``<unknown>``),
    never a made-up 0: an LC always sends all three."""

    WHAT = "hello outbox"
    depth: NonNegative | None = None
    low_seq: NonNegative | None = None
    next_seq: NonNegative | None = None


PartIndex = Annotated[StrictInt, Field(ge=0, le=MAX_INT)]
PartCount = Annotated[StrictInt, Field(ge=1, le=MAX_INT)]
PartId = Annotated[StrictStr, Field(min_length=1, max_length=64)]


def _check_parts(fields: tuple[str, ...], part_id: str | None, part: int | None, parts: int | None) -> None:
    """The part fields of a hello or sync go together, and the index lies below the count."""
    given = [part_id is not None, part is not None, parts is not None]
    if any(given) and not all(given):
        missing = ", ".join(n for n, g in zip(fields, given, strict=True) if not g)
        raise ValueError(f"a part needs {', '.join(fields)} together; {missing} missing")
    if part is not None and parts is not None and part >= parts:
        raise ValueError(f"part {part} is not below parts {parts} (parts are numbered from 0)")


class Hello(ListBody):
    """``hello`` (LC -> GM, on every connect): the outbox epoch and what the node holds.

    A hello too large for one message is sent in parts (``helloId``, ``part``, ``parts``): every
    part carries the same header (agent, epoch, boot, outbox) and a slice of ``resources``; the
    GM answers once it has every part. A body without the part fields is a whole hello."""

    WHAT = "hello body"
    ITEMS = "resources"
    PART_FIELDS: ClassVar[tuple[str, str, str]] = ("helloId", "part", "parts")
    OMIT_IF_NONE = frozenset({"hello_id", "part", "parts"})
    agent: StrictStr = ""
    epoch: Name
    boot: StrictStr = ""
    resources: list[ResourceRef]
    outbox: OutboxState = Field(default_factory=OutboxState)
    """The node's outbox as of this hello (every field None when the hello has no ``outbox``)."""
    hello_id: PartId | None = None
    """The id the parts of one hello share (a new one for every hello the LC sends)."""
    part: PartIndex | None = None
    """Which part this is, from 0."""
    parts: PartCount | None = None
    """How many parts the hello has (1: the whole hello, from an LC that reads a sync in parts)."""

    @model_validator(mode="after")
    def _parts(self) -> Self:
        _check_parts(self.PART_FIELDS, self.hello_id, self.part, self.parts)
        return self

    @property
    def part_id(self) -> str | None:
        return self.hello_id


class Sync(ListBody):
    """``sync`` (GM -> LC, after every hello): everything the node should hold.

    Sent in parts (``syncId``, ``part``, ``parts``, each with a slice of ``resources``) to an LC
    whose hello carried the part fields, when one message cannot hold the list; the LC drops
    what the list does not name only once it has every part. A body without the part fields is
    a whole sync."""

    WHAT = "sync body"
    ITEMS = "resources"
    PART_FIELDS: ClassVar[tuple[str, str, str]] = ("syncId", "part", "parts")
    OMIT_IF_NONE = frozenset({"sync_id", "part", "parts"})
    resources: list[ResourceRef]
    sync_id: PartId | None = None
    """The id the parts of one sync share."""
    part: PartIndex | None = None
    parts: PartCount | None = None

    @model_validator(mode="after")
    def _parts(self) -> Self:
        _check_parts(self.PART_FIELDS, self.sync_id, self.part, self.parts)
        return self

    @property
    def part_id(self) -> str | None:
        return self.sync_id


# -- hellos and syncs in parts ---------------------------------------------------------------------

MAX_PARTS = 256
"""The most parts one hello or sync may come in (with the default payload limit of 256 KiB, some
400,000 resources); a part of a set announcing more is refused (``too_many_parts``)."""

T = TypeVar("T")


class PartRefused(ProtocolError):
    """A part of a hello or sync that cannot join its set; ``reason`` says why (a metric label)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def split_to_fit(items: list[T], size: Callable[[list[T]], int], limit: int) -> list[list[T]]:
    """``items`` cut into consecutive slices whose messages (``size(slice)``: the bytes of the
    message carrying that slice, as encoded) are each at most ``limit`` bytes; one slice if the
    whole fits. How many slices is guessed from the size of the whole, and a slice still over the
    limit is cut again. Raises ``PayloadTooLarge`` if one item alone is over the limit."""
    whole = size(items)
    if whole <= limit:
        return [items]
    if len(items) <= 1:
        raise PayloadTooLarge(f"a message with one item is {whole} bytes, over the limit of {limit}")
    count = max(2, -(-whole * 11 // (limit * 10)))  # 10 % of headroom for each slice's envelope
    step = -(-len(items) // count)
    out: list[list[T]] = []
    for start in range(0, len(items), step):
        out.extend(split_to_fit(items[start : start + step], size, limit))
    return out


def split_into_parts(items: list[T], size: Callable[[list[T]], int], limit: int) -> list[list[T]]:
    """``split_to_fit``, and ``PayloadTooLarge`` if that takes more than ``MAX_PARTS`` parts: the
    slices of a hello or sync in parts, as both ends cut them."""
    slices = split_to_fit(items, size, limit)
    if len(slices) > MAX_PARTS:
        raise PayloadTooLarge(f"{len(items)} resources need {len(slices)} parts, over {MAX_PARTS}")
    return slices


@dataclass(slots=True)
class PartSet(Generic[T]):
    """The parts of one hello or sync received so far (``PartGatherer``)."""

    id: str
    parts: int
    header: Hashable
    started: float
    received: dict[int, list[T]] = field(default_factory=dict)
    items: int = 0


class PartGatherer(Generic[T]):
    """Gathers the parts of one sender's hellos (at the GM, one per node) or syncs (at the LC),
    one set at a time: a part with another id starts a new set, dropping the one being gathered.

    The ids of the last ``REMEMBERED`` sets completed or dropped are kept, and a part of one of
    them is refused (``unknown_hello``, ``unknown_sync``): a late copy must not start a set that
    can never complete. Memory: one set, at most ``max_parts`` parts."""

    REMEMBERED = 4

    def __init__(self, what: str, max_parts: int = MAX_PARTS) -> None:
        self.what = what
        self.max_parts = max_parts
        self.current: PartSet[T] | None = None
        self._done: deque[str] = deque(maxlen=self.REMEMBERED)

    def add(
        self,
        part_id: str,
        part: int,
        parts: int,
        items: list[T],
        *,
        header: Hashable = None,
        now: float = 0.0,
    ) -> tuple[list[T] | None, PartSet[T] | None]:
        """Add one part, whose fields the model checked (``0 <= part < parts``). Returns every item
        of the set in part order once it is complete (else None), and the set this part dropped by
        starting a new one (else None). ``header`` (the hello's epoch...) must be the same in every
        part of a set. Raises ``PartRefused`` (and changes nothing) for a part that cannot join."""
        self.check(part_id, part, parts, header)
        dropped: PartSet[T] | None = None
        current = self.current
        if current is None or current.id != part_id:
            dropped = self.drop()
            current = self.current = PartSet(part_id, parts, header, now)
        current.received[part] = items
        current.items += len(items)
        if len(current.received) < current.parts:
            return None, dropped
        self.current = None
        self._done.append(current.id)
        return [item for index in range(current.parts) for item in current.received[index]], dropped

    def check(self, part_id: str, part: int, parts: int, header: Hashable = None) -> None:
        """Raise ``PartRefused`` if this part cannot join (``add`` would refuse it); change nothing."""
        where = f"part {part} of {parts} of {self.what} {part_id}"
        if parts > self.max_parts:
            raise PartRefused("too_many_parts", f"{where}: more than the {self.max_parts} parts allowed")
        if part_id in self._done:
            raise PartRefused(f"unknown_{self.what}", f"{where}: that {self.what} was complete or given up")
        current = self.current
        if current is None or current.id != part_id:
            return
        if parts != current.parts:
            raise PartRefused("part_mismatch", f"{where}: its first part said {current.parts} parts")
        if header != current.header:
            raise PartRefused("part_mismatch", f"{where}: its header differs from its first part's")
        if part in current.received:
            raise PartRefused("duplicate_part", f"{where}: that part was received already")

    def drop(self) -> PartSet[T] | None:
        """Give up the set being gathered, if any (its id is remembered), and return it."""
        current, self.current = self.current, None
        if current is not None:
            self._done.append(current.id)
        return current


class SeqAck(ListBody):
    """``ack`` on ``down/_ctl`` (GM -> LC): these reports of this outbox epoch are applied."""

    WHAT = "ack body"
    ITEMS = "seqs"
    epoch: Name
    seqs: list[NonNegative]


class Applied(Body):
    """One downstream message the LC has handled, in its ``ack``.

    ``refused`` (absent unless set) says the LC refused the object and why; the message is
    acknowledged all the same, so the GM stops resending a version the LC will never store.
    """

    WHAT = "applied item"
    OMIT_IF_NONE = frozenset({"refused"})
    kind: Name
    ns: StrictStr
    name: Name
    rv: StrictStr | None
    op: Literal["upsert", "delete"]
    refused: StrictStr | None = None


class AppliedAck(ListBody):
    """``ack`` on ``up/_ctl`` (LC -> GM): the downstream messages stored, or ignored as stale."""

    WHAT = "ack body"
    ITEMS = "applied"
    applied: list[Applied]

    def to_body(self) -> dict[str, Any]:
        return {"applied": [a.to_body() for a in self.applied]}


class Upsert(Body):
    """``upsert`` (GM -> LC): the whole resource; ``parse_object`` parses it into its model."""

    WHAT = "upsert body"
    object: dict[StrictStr, Any]


# -- reports ---------------------------------------------------------------------------------------


class DatasetReport(Body):
    """``report`` on ``up/Dataset/{ns}/{name}``: the samples the node counted, and when."""

    WHAT = "Dataset report"
    OMIT_IF_NONE = frozenset({"state", "message"})
    number_of_samples: NonNegative
    """The samples counted; while the file cannot be read, the last count the node reported."""
    update_time: Rfc3339
    state: StrictStr | None = None
    """What the node found: one of ``DATASET_STATES`` (``ok``, ``missing``, ``unreadable``,
    ``unsupported``); None from an LC older than this field. A value this version does not know
    is kept as given (a newer LC may add one) and shown as an unknown state."""
    message: StrictStr | None = None
    """Why the state is not ``ok`` (the path and the error), at most ``DATASET_MESSAGE_MAX`` characters
    as sent; a longer one is cut by the GM."""


DATASET_STATES = ("ok", "missing", "unreadable", "unsupported")
"""The ``state`` values of a Dataset report (``edge/dataset_monitor.py``'s ``Count.status``)."""
DATASET_MESSAGE_MAX = 1000


class JobReady(Body):
    """A job stage's trigger fired or its inputs exist (``event: ready``); ``data`` is what the
    worker needs (Train: trainDataURL, evalDataURL, numberOfSamples; Eval: models; Deploy: model)."""

    WHAT = "LifelongLearningJob report"
    OMIT_IF_NONE = frozenset({"message"})
    event: Literal["ready"] = "ready"
    stage: Stage
    round: NonNegative
    data: dict[StrictStr, JsonValue] = Field(default_factory=dict)
    message: StrictStr | None = None


class JobSkipped(Body):
    """Eval or Deploy has nothing to do (``event: skipped``): the stage completes at once."""

    WHAT = "LifelongLearningJob report"
    OMIT_IF_NONE = frozenset({"message", "data"})
    event: Literal["skipped"] = "skipped"
    stage: Stage
    round: NonNegative
    message: StrictStr | None = None
    data: dict[StrictStr, JsonValue] | None = None


class JobWorkerInfo(Body):
    """What a worker posted to the LC's worker API (``event: workerInfo``), forwarded as posted."""

    WHAT = "LifelongLearningJob report"
    event: Literal["workerInfo"] = "workerInfo"
    worker: Name
    info: dict[StrictStr, JsonValue]


JobReport: TypeAlias = JobReady | JobSkipped | JobWorkerInfo
_job_report: TypeAdapter[JobReport] | None = None
_job_report_lock = threading.Lock()


def _job_report_adapter() -> TypeAdapter[JobReport]:
    """Made with the first report a process parses, as the models are built on first use (an
    idle LC never parses one: ~0.15 MiB of its RSS, docs/performance.md)."""
    global _job_report
    if _job_report is not None:
        return _job_report
    with _job_report_lock:
        if _job_report is None:
            _job_report = _adapter(
                Annotated[JobReady | JobSkipped | JobWorkerInfo, Field(discriminator="event")],
                JobReady,
                JobSkipped,
                JobWorkerInfo,
            )
        return _job_report


def parse_job_report(body: Any) -> JobReport:
    """The model of a ``LifelongLearningJob`` report body, chosen by its ``event``."""
    if not isinstance(body, Mapping):
        what = "null" if body is None else type(body).__name__
        raise InvalidBody("LifelongLearningJob report", [("", f"must be a mapping, got {what}")])
    try:
        return _job_report_adapter().validate_python(body, **_WIRE_NAMES_ONLY)
    except pydantic.ValidationError as exc:
        errors = _errors(exc)
        # the discriminated union prefixes the event's tag to every path: drop it
        tag = str(body.get("event"))
        errors = [(p[len(tag) + 1 :] if p.startswith(tag + ".") else p, m) for p, m in errors]
        raise InvalidBody("LifelongLearningJob report", errors) from None


class WorkerReport(Body):
    """``report`` on ``up/Worker/{ns}/{name}``: a local worker's phase (standalone mode)."""

    WHAT = "Worker report"
    job: Name
    stage: Stage
    round: NonNegative
    phase: Literal["Pending", "Running", "Succeeded", "Failed"]
    exit_code: ExitCode | None = None
    message: StrictStr = ""
    output: dict[StrictStr, JsonValue] = Field(default_factory=dict)


class WorkerInfoPost(Body):
    """A worker's ``POST /sedna/workers/{name}/info`` (docs/writing-workers.md): any JSON object.

    Only the fields the LC reads are checked: ``namespace`` and ``ownerName``, strings if given.
    Everything else is kept as posted and forwarded in the ``workerInfo`` report.
    """

    model_config = ConfigDict(extra="allow")
    WHAT = "worker info"
    namespace: StrictStr | None = None
    owner_name: StrictStr | None = None


# -- worker logs (GM -> LC request on down/_ctl, LC -> GM answer on up/_ctl, op ``log``) -------------

MAX_LOG_CHUNK = 64 * 1024
"""The most bytes of a worker's log one answer carries (the GM pages through longer logs)."""
MAX_TAIL_LINES = 100_000
"""The most lines a ``tailLines`` request may ask for."""
LogError: TypeAlias = Literal["unknown_worker", "invalid", "unreadable", "too_large"]
"""Why an LC could not answer a log request with data (``LogAnswer.reason``)."""
LOG_ERRORS: tuple[str, ...] = get_args(LogError)


class LogRequest(Body):
    """``log`` on ``down/_ctl`` (GM -> LC): part of the log of worker ``ns/worker`` on this node.

    ``offset`` (bytes from the start of the worker's output, as earlier answers count them):
    the bytes from there on; else ``tailLines``: the last lines; else the log from its first
    kept byte. At most ``maxBytes`` bytes either way. Answered by a ``LogAnswer`` whose
    ``request`` is this message's envelope ``id``. Not durable: a request the node does not
    get is not resent (the GM gives up after its deadline)."""

    WHAT = "log request body"
    OMIT_IF_NONE = frozenset({"offset", "tail_lines"})
    ns: DnsLabel
    worker: DnsSubdomain
    offset: NonNegative | None = None
    tail_lines: Annotated[StrictInt, Field(ge=0, le=MAX_TAIL_LINES)] | None = None
    max_bytes: Annotated[StrictInt, Field(ge=1, le=MAX_LOG_CHUNK)] = MAX_LOG_CHUNK


class LogAnswer(Body):
    """``log`` on ``up/_ctl`` (LC -> GM): the answer to the ``LogRequest`` whose envelope id is
    ``request``.

    ``data`` is the log's bytes ``[start, end)`` as UTF-8 text (an undecodable byte becomes
    U+FFFD); ``size`` is where the log ends now, ``first`` where what the LC still keeps of it
    begins (older output was rotated away); ``running`` says whether the worker still runs (a
    follower stops once it does not and ``end == size``); ``truncated`` that ``tailLines`` asked
    for more than ``maxBytes`` held. Or, when the LC cannot answer with data, ``error`` says why
    in one line and ``reason`` is one of ``LOG_ERRORS``."""

    WHAT = "log answer body"
    OMIT_IF_NONE = frozenset({"error", "reason"})
    request: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    ns: StrictStr = Field(default="", max_length=253)
    worker: StrictStr = Field(default="", max_length=253)
    data: StrictStr = Field(default="", max_length=MAX_LOG_CHUNK)
    start: NonNegative = 0
    end: NonNegative = 0
    first: NonNegative = 0
    size: NonNegative = 0
    running: StrictBool = False
    truncated: StrictBool = False
    error: Annotated[StrictStr, Field(max_length=1000)] | None = None
    reason: LogError | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.error is None) != (self.reason is None):
            raise ValueError("error and reason go together")
        if not self.first <= self.start <= self.end <= self.size:
            raise ValueError(
                f"offsets must satisfy first <= start <= end <= size, got "
                f"{self.first}, {self.start}, {self.end}, {self.size}"
            )
        return self


# -- downstream objects ----------------------------------------------------------------------------

DownObject: TypeAlias = LifelongLearningJob | Dataset | Worker | LabelledSamples
"""A resource the GM sends down in an ``upsert``."""
_INTERNAL_KINDS: dict[str, type[Worker] | type[LabelledSamples]] = {
    Worker.KIND: Worker,
    LabelledSamples.KIND: LabelledSamples,
}


def parse_object(obj: Any) -> DownObject:
    """The model of the object of an ``upsert``, chosen by its ``kind``; ``InvalidBody`` names
    every field that is wrong (``object.spec.url: Input should be a valid string``)."""
    if not isinstance(obj, Mapping):
        what = "null" if obj is None else type(obj).__name__
        raise InvalidBody("upsert body", [("object", f"must be a mapping, got {what}")])
    internal = _INTERNAL_KINDS.get(obj.get("kind"))  # type: ignore[arg-type]
    if internal is not None:
        try:
            return internal.model_validate(obj, **_WIRE_NAMES_ONLY)
        except pydantic.ValidationError as exc:
            raise InvalidBody("upsert body", _errors(exc, ("object",))) from None
    try:
        resource = parse_resource(dict(obj))
    except ValidationError as exc:
        raise InvalidBody("upsert body", [(_under_object(p), m) for p, m in exc.errors]) from None
    if isinstance(resource, LifelongLearningJob | Dataset):
        return resource
    raise InvalidBody("upsert body", [("object.kind", f"{resource.kind} is not sent to nodes")])


def _under_object(path: str) -> str:
    return f"object.{path}" if path else "object"
