"""The class registry: names in a worker's configuration -> the classes that implement them.

Who uses it: ``LifelongLearning`` resolves each ``{"method": name, "param": {...}}`` of its
constructor here; the library's defaults (``lifelong.learning.algorithms``) register under the
type names and method names Sedna's library uses, so a Sedna-style configuration works; a
user's own class registers with ``@ClassFactory.register(ClassType.STP)`` (or an ``alias``).
docs/writing-workers.md lists the names.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["ClassFactory", "ClassType", "UnknownMethod"]


class ClassType:
    """The type names of the registry (the values Sedna's library uses)."""

    GENERAL = "general"
    HEM = "hard_example_mining"
    MTL = "multi_task_learening"  # sic: Sedna's spelling, kept so that its names resolve
    UTD = "unseen_task_detect"
    ALGORITHM = "algorithm"
    DATASET = "data_process"
    CALLBACK = "post_process_callback"
    UTP = "unseen_task_processing"
    KM = "knowledge_management"
    STP = "seen_task_processing"


class UnknownMethod(ValueError):
    """A configuration names a method the registry does not hold."""


class ClassFactory:
    """The registry: ``type name -> {name -> class or function}``, shared by the process."""

    __registry__: dict[str, dict[str, Any]] = {}

    @classmethod
    def register(cls, type_name: str = ClassType.GENERAL, alias: str | None = None) -> Callable[[T], T]:
        """A decorator that registers a class (or function) under ``alias`` or its own name."""

        def wrapper(t_cls: T) -> T:
            cls.register_cls(t_cls, type_name, alias)
            return t_cls

        return wrapper

    @classmethod
    def register_cls(cls, t_cls: T, type_name: str = ClassType.GENERAL, alias: str | None = None) -> T:
        """Register ``t_cls``. Registering the same object again under a name is a no-op (a module
        imported twice); another object under a taken name is refused."""
        name = alias if alias is not None else getattr(t_cls, "__name__", "")
        if not name:
            raise ValueError(f"cannot register {t_cls!r}: it has no name and no alias was given")
        group = cls.__registry__.setdefault(type_name, {})
        if name in group and group[name] is not t_cls:
            raise ValueError(f"{type_name!r} already has a class registered as {name!r}")
        group[name] = t_cls
        return t_cls

    @classmethod
    def register_from_package(cls, package: Any, type_name: str = ClassType.GENERAL) -> None:
        """Register every public class and function of a module or package."""
        for name in dir(package):
            if name.startswith("_"):
                continue
            value = getattr(package, name)
            if inspect.isclass(value) or inspect.isfunction(value):
                cls.register_cls(value, type_name)

    @classmethod
    def is_exists(cls, type_name: str, cls_name: str | None = None) -> bool:
        if cls_name is None:
            return type_name in cls.__registry__
        return cls_name in cls.__registry__.get(type_name, {})

    @classmethod
    def names(cls, type_name: str) -> list[str]:
        return sorted(cls.__registry__.get(type_name, {}))

    @classmethod
    def get_cls(cls, type_name: str, t_cls_name: str | None = None) -> Any:
        """The class registered as ``t_cls_name``; ``UnknownMethod`` names the known ones."""
        if t_cls_name is None or not cls.is_exists(type_name, t_cls_name):
            known = ", ".join(cls.names(type_name)) or "none"
            raise UnknownMethod(
                f"no {type_name!r} method named {t_cls_name!r} is registered (known: {known})"
            )
        return cls.__registry__[type_name][t_cls_name]
