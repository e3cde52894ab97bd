"""Shared pieces of lifelong: API models, the bus protocol, the state machine, the bus client.

Layer rule: this package imports nothing else of ours (checked by ``make check``).
"""
