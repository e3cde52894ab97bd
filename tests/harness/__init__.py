"""Test harness: real brokers and real lifelong processes for the test suite.

Imported by tests as ``harness`` (pytest puts ``tests/`` on ``sys.path``).
"""
