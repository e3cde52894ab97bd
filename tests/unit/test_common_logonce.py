"""``LogOnce``: an item is reported once per reason until it is forgotten (alone or with its scope)."""

from __future__ import annotations

from lifelong.common.logonce import LogOnce


def test_once_per_reason_until_forgotten() -> None:
    once = LogOnce()
    assert once.first("jobs", "ns/a", "boom")
    assert not once.first("jobs", "ns/a", "boom")  # the same problem again: quiet
    assert once.first("jobs", "ns/b", "boom")  # another item
    assert once.first("datasets", "ns/a", "boom")  # the same key in another scope
    assert once.first("jobs", "ns/a", "other")  # it fails differently: reported again
    once.forget("jobs", "ns/a")
    assert once.first("jobs", "ns/a", "other")  # it went through in between


def test_a_forgotten_scope_is_reported_again_and_the_bound_holds() -> None:
    once = LogOnce(limit=2)
    assert once.first("node-a", "invalid")
    assert once.first("node-a", "schema")
    once.forget_scope("node-a")  # the node's new connection
    assert once.first("node-a", "invalid") and once.first("node-a", "schema")
    assert once.first("node-b", "invalid")
    assert once.first("node-c", "invalid")  # a third scope: past the limit it starts over
    assert once.first("node-a", "invalid")  # so an old item may be reported once more
    once.forget("never-seen", "x")  # forgetting what was never reported is harmless
