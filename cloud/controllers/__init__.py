"""The GM's controllers: one package per resource kind (controller, downstream, upstream)."""
