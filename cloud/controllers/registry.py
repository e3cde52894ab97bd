"""Controllers by resource kind: the service routes store events and reports through here."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from lifelong.cloud.controllers.base import Controller


class Registry:
    def __init__(self) -> None:
        self._by_kind: dict[str, Controller[Any]] = {}

    def register(self, controller: Controller[Any]) -> None:
        if controller.kind in self._by_kind:
            raise ValueError(f"a controller for {controller.kind} is already registered")
        self._by_kind[controller.kind] = controller

    def get(self, kind: str) -> Controller[Any] | None:
        return self._by_kind.get(kind)

    def kinds(self) -> list[str]:
        return sorted(self._by_kind)

    def __iter__(self) -> Iterator[Controller[Any]]:
        return iter(self._by_kind.values())
