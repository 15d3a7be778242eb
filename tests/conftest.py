"""Shared test setup: isolate ROS 2 traffic and logs, point LIBERO at a private config.

Every pytest process gets its own DDS domain and localhost-only discovery, so parallel runs
(and other sessions on the machine) never see each other's topics.
"""
from __future__ import annotations

import os
import random
import tempfile

_TMP = tempfile.mkdtemp(prefix="prevla-test-")
os.environ.setdefault("ROS_LOG_DIR", os.path.join(_TMP, "ros_log"))
os.environ["ROS_DOMAIN_ID"] = str(random.Random(os.getpid()).randint(1, 101))
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("LIBERO_CONFIG_PATH", os.path.join(_TMP, "libero_config"))
