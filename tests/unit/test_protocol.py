"""The bus protocol's pure parts: envelope, codecs, topics."""

from __future__ import annotations

import contextlib
import json
import string

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lifelong.common.codec import Codec, decode, decode_map, detect, encode
from lifelong.common.envelope import PROTOCOL_VERSION, Envelope, Op
from lifelong.common.errors import DecodeError, PayloadTooLarge, ProtocolError, TopicError, UnsupportedVersion
from lifelong.common.topics import Direction, Topics, check_segment

SEGMENT = st.text(alphabet=string.ascii_lowercase + string.digits + "-._", min_size=1, max_size=40)
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text(max_size=50)
    | st.floats(allow_nan=False, allow_infinity=False)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)

envelopes = st.builds(
    Envelope.new,
    node=SEGMENT,
    kind=st.sampled_from(["LifelongLearningJob", "Dataset", "Model", "_ctl"]),
    op=st.sampled_from(list(Op)),
    ns=SEGMENT,
    name=SEGMENT,
    rv=st.none() | st.text(alphabet=string.digits, min_size=1, max_size=12),
    seq=st.none() | st.integers(0, 2**63 - 1),
    body=st.none() | st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=6),
    ts=st.floats(0, 4e9),
)


@settings(max_examples=300)
@given(env=envelopes, codec=st.sampled_from(list(Codec)))
def test_every_envelope_round_trips_through_both_codecs(env: Envelope, codec: Codec) -> None:
    data = encode(env, codec)
    assert detect(data) is codec
    assert decode(data) == env


@settings(max_examples=1000)
@given(data=st.binary(max_size=512))
def test_arbitrary_bytes_raise_only_protocol_errors(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode(data)


@settings(max_examples=300)
@given(env=envelopes, cut=st.integers(0, 200), codec=st.sampled_from(list(Codec)))
def test_truncated_envelopes_are_decode_errors(env: Envelope, cut: int, codec: Codec) -> None:
    data = encode(env, codec)
    truncated = data[: min(cut, len(data) - 1)]
    with pytest.raises(ProtocolError):
        decode(truncated)


def test_msgpack_is_the_default_and_json_is_readable() -> None:
    env = Envelope.new(
        node="edge1",
        kind="Dataset",
        ns="default",
        name="ds",
        op=Op.REPORT,
        seq=7,
        body={"numberOfSamples": 12},
    )
    packed = encode(env)
    assert detect(packed) is Codec.MSGPACK
    assert msgpack.unpackb(packed)["seq"] == 7
    text = encode(env, Codec.JSON).decode()
    obj = json.loads(text)
    assert obj["node"] == "edge1" and obj["op"] == "report" and obj["body"] == {"numberOfSamples": 12}


def test_json_typed_by_a_person_is_accepted() -> None:
    env = decode(b' {"v":1,"id":"m1","node":"edge1","kind":"_ctl","op":"hello","ts":1700000000}')
    assert env.op is Op.HELLO and env.ts == 1700000000


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_unknown_protocol_version_is_rejected_clearly(version: object) -> None:
    obj = {"id": "m", "node": "n", "kind": "K", "op": "hello", "ts": 1.0}
    if version is not None:
        obj["v"] = version
    with pytest.raises(UnsupportedVersion, match="protocol version"):
        decode(json.dumps(obj).encode())


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"op": "explode"}, "op"),
        ({"seq": -1}, "seq"),
        ({"seq": "5"}, "seq"),
        ({"node": ""}, "node"),
        ({"body": [1, 2]}, "body"),
        ({"extra": 1}, "extra"),
        ({"ts": "now"}, "ts"),
    ],
)
def test_wrong_field_types_name_the_field(patch: dict[str, object], field: str) -> None:
    obj = {"v": 1, "id": "m", "node": "n", "kind": "K", "op": "hello", "ts": 1.0, **patch}
    with pytest.raises(DecodeError, match=f"envelope field {field}"):
        decode(json.dumps(obj).encode())


def test_payload_limit_on_encode_and_decode() -> None:
    env = Envelope.new(node="n", kind="K", op=Op.REPORT, body={"blob": "x" * 2000})
    with pytest.raises(PayloadTooLarge, match="over the limit of 1000"):
        encode(env, max_payload=1000)
    data = encode(env)
    with pytest.raises(PayloadTooLarge):
        decode(data, max_payload=1000)
    assert decode(data, max_payload=len(data)) == env


@pytest.mark.parametrize("codec", list(Codec))
def test_deep_nesting_is_a_decode_error_not_a_crash(codec: Codec) -> None:
    if codec is Codec.JSON:
        data = b'{"v":1,"body":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    else:
        data = b"\x81\xa4body" + b"\x91" * 100_000 + b"\x01"
    with pytest.raises(DecodeError):
        decode_map(data, max_payload=10**7)


def test_non_map_payloads_are_rejected() -> None:
    with pytest.raises(DecodeError, match="not a map"):
        decode(msgpack.packb([1, 2]))
    with pytest.raises(DecodeError, match="empty"):
        decode(b"")


# -- topics -----------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["lifelong/v1", "a", "x/y/z"])
def test_every_topic_builds_and_parses_back(prefix: str) -> None:
    t = Topics(prefix)
    down = t.parse(t.down("edge-1", "LifelongLearningJob", "default", "atcii"))
    assert (down.node, down.direction, down.kind, down.ns, down.name) == (
        "edge-1",
        Direction.DOWN,
        "LifelongLearningJob",
        "default",
        "atcii",
    )
    up = t.parse(t.up("edge-1", "Dataset", "ns1", "ds"))
    assert (up.direction, up.kind, up.name) == (Direction.UP, "Dataset", "ds")
    assert t.parse(t.down_ctl("edge-1")).is_control
    ctl_up = t.parse(t.up_ctl("edge-1"))
    assert ctl_up.is_control and ctl_up.direction is Direction.UP
    presence = t.parse(t.node_presence("edge-1"))
    assert presence.is_presence and presence.node == "edge-1"
    gm = t.parse(t.gm_presence())
    assert gm.is_presence and gm.node is None
    assert t.down_ctl("e") == f"{prefix}/node/e/down/_ctl"
    assert t.node_down_filter("e") == f"{prefix}/node/e/down/#"
    assert t.all_up_filter() == f"{prefix}/node/+/up/#"


@given(node=SEGMENT, ns=SEGMENT, name=SEGMENT)
def test_resource_topics_round_trip(node: str, ns: str, name: str) -> None:
    t = Topics()
    parsed = t.parse(t.up(node, "Model", ns, name))
    assert (parsed.node, parsed.ns, parsed.name) == (node, ns, name)


@pytest.mark.parametrize("bad", ["", "a/b", "a+b", "a#", "a\x00b", "x" * 254])
@pytest.mark.parametrize("where", ["node", "ns", "name"])
def test_bad_segments_are_rejected(bad: str, where: str) -> None:
    args = {"node": "n", "ns": "default", "name": "job"}
    args[where] = bad
    with pytest.raises(TopicError):
        Topics().down(args["node"], "LifelongLearningJob", args["ns"], args["name"])


@pytest.mark.parametrize(
    "topic",
    [
        "other/v1/node/n/up/_ctl",
        "lifelong/v1/node/n",
        "lifelong/v1/node/n/sideways/_ctl",
        "lifelong/v1/node/n/up/Kind/ns",
        "lifelong/v1/node/n/up/Kind/ns/name/extra",
        "lifelong/v1/node//up/_ctl",
        "lifelong/v1/node/n/up/_secret/ns/name",
        "lifelong/v1/gm/elsewhere",
    ],
)
def test_foreign_or_malformed_topics_do_not_parse(topic: str) -> None:
    with pytest.raises(TopicError):
        Topics().parse(topic)


def test_reserved_kind_and_bad_prefix() -> None:
    with pytest.raises(TopicError, match="may not start with '_'"):
        Topics().down("n", "_ctl", "ns", "name")
    for prefix in ["", "/a", "a/", "a/+/b"]:
        with pytest.raises(TopicError):
            Topics(prefix)
    assert check_segment("ok", "node") == "ok"


def test_protocol_version_constant() -> None:
    assert PROTOCOL_VERSION == 1
