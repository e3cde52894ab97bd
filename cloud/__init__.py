"""The cloud Global Manager (GM): drives LifelongLearningJobs and talks to the edge over MQTT.

Never imports ``lifelong.edge`` (checked by ``make check``).
"""
