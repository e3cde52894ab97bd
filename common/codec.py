"""Encoding and decoding of envelopes: msgpack (default) and JSON, detected on decode.

Pure and I/O-free. ``decode`` accepts arbitrary bytes and raises nothing but
``ProtocolError`` subclasses (``DecodeError``, ``PayloadTooLarge``, ``UnsupportedVersion``),
so a handler can count and drop garbage with one ``except``.

Detection: a JSON envelope is an object, so its first non-blank byte is ``{``; a msgpack
envelope is a map, whose first byte is 0x80-0x8f, 0xde or 0xdf. Neither can be taken for
the other.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

import msgpack
import pydantic

from lifelong.common.envelope import PROTOCOL_VERSION, Envelope
from lifelong.common.errors import DecodeError, PayloadTooLarge, UnsupportedVersion

DEFAULT_MAX_PAYLOAD = 256 * 1024
"""Bytes. Large enough for a job with several pod templates; small enough that a flood of
oversized messages cannot exhaust an edge node's memory. Configurable per process."""

_JSON_START = frozenset(b"{ \t\r\n")


class Codec(StrEnum):
    MSGPACK = "msgpack"
    JSON = "json"


def encode(env: Envelope, codec: Codec | str = Codec.MSGPACK, *, max_payload: int | None = None) -> bytes:
    """Serialise an envelope. Raises ``PayloadTooLarge`` over ``max_payload`` bytes."""
    wire = env.to_wire()
    if Codec(codec) is Codec.JSON:
        data = json.dumps(wire, separators=(",", ":"), ensure_ascii=False).encode()
    else:
        data = msgpack.packb(wire, use_bin_type=True)
    limit = DEFAULT_MAX_PAYLOAD if max_payload is None else max_payload
    if len(data) > limit:
        raise PayloadTooLarge(
            f"envelope {env.kind}/{env.ns}/{env.name} op={env.op.value} is {len(data)} bytes, "
            f"over the limit of {limit}"
        )
    return data


def detect(data: bytes) -> Codec:
    """Which codec produced ``data`` (by its first byte)."""
    if data and data[0] in _JSON_START:
        return Codec.JSON
    return Codec.MSGPACK


def decode_map(data: bytes, *, max_payload: int | None = None) -> dict[str, Any]:
    """Bytes to the raw map, without validating the envelope's fields."""
    limit = DEFAULT_MAX_PAYLOAD if max_payload is None else max_payload
    if len(data) > limit:
        raise PayloadTooLarge(f"payload is {len(data)} bytes, over the limit of {limit}")
    if not data:
        raise DecodeError("empty payload")
    codec = detect(data)
    try:
        if codec is Codec.JSON:
            obj = json.loads(data)
        else:
            obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except RecursionError:
        raise DecodeError(f"{codec.value} payload nested too deeply") from None
    except Exception as exc:  # the codecs raise many types for garbage; all mean the same
        raise DecodeError(f"not a valid {codec.value} envelope: {type(exc).__name__}: {exc}"[:300]) from None
    if not isinstance(obj, dict):
        raise DecodeError(f"{codec.value} payload is a {type(obj).__name__}, not a map")
    return obj


def decode(data: bytes, *, max_payload: int | None = None) -> Envelope:
    """Bytes to a validated envelope; only ``ProtocolError`` subclasses escape."""
    obj = decode_map(data, max_payload=max_payload)
    version = obj.get("v")
    if version != PROTOCOL_VERSION:
        raise UnsupportedVersion(
            f"protocol version {version!r} is not supported (this side speaks {PROTOCOL_VERSION})"
        )
    try:
        return Envelope.model_validate(obj)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(p) for p in first["loc"]) or "envelope"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise DecodeError(f"envelope field {path}: {first['msg']}{more}") from None
    except RecursionError:
        raise DecodeError("envelope body nested too deeply") from None
