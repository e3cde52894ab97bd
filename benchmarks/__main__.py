"""``python -m benchmarks [--quick] [--broker mosquitto|amqtt|all] [--scenario NAME]``."""

import sys

from benchmarks.runner import main

sys.exit(main())
