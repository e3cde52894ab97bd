"""Resource stores of the GM: standalone SQLite and Kubernetes, behind one interface."""

from lifelong.cloud.stores.base import Conflict, NotFound, ResourceStore, WatchEvent

__all__ = ["Conflict", "NotFound", "ResourceStore", "WatchEvent"]
