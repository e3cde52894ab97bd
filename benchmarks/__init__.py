"""The benchmark harness (``make bench``): lifelong against raw paho-mqtt, same broker, same run.

See docs/performance.md for what each scenario measures and the latest results.
"""
