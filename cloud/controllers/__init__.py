"""The GM's controllers: one package per resource kind (its controller; what the edge reported)."""
