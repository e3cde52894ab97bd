"""What tests of an in-process GM (``GMService`` with a store, no broker) share: a bus that
sends nowhere and a Dataset to apply."""

from __future__ import annotations

from typing import Any

DATASET = {
    "apiVersion": "sedna.io/v1alpha1",
    "kind": "Dataset",
    "metadata": {"name": "ds1", "namespace": "default"},
    "spec": {"url": "/data/ds.txt", "format": "txt", "nodeName": "node-a"},
}


class NoBus:
    """A GM bus that publishes nowhere (the tests look at the API, not the bus)."""

    def publish(self, *args: Any, **kwargs: Any) -> object:
        return object()

    def close(self, *args: Any, **kwargs: Any) -> None:
        pass
