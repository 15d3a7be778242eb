"""A node's health as /diagnostics reports it: current, and recovering (ROS-free).

A node is ERROR while something is wrong: either a state that lasts (the node says so itself,
e.g. a verifier model that did not load) or an error event (a malformed message, a rejected
input, a failed policy call) less than ``diagnostics_recovery_s`` ago. After that healthy
window with no new error the node reports its own state again (OK). The last error is kept
in the ``last_error`` value with its age (``last_error_age_s``), the way ``diagnostic_updater``
keeps history out of the level: the level says *now*, the values say what happened.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

from prevla_ros.runtime.settings import check, setting


@dataclass
class HealthConfig:
    """How a node's /diagnostics level recovers (composed into every node config)."""

    diagnostics_recovery_s: float = setting(
        "an error (bad message, rejected input, failed call) keeps the node ERROR in "
        "/diagnostics for this many seconds; with no new error it then reports its own state "
        "again (OK); the last error stays in the last_error value", 10.0)

    def __post_init__(self) -> None:
        value = self.diagnostics_recovery_s
        check(isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
              type(self).__name__, "diagnostics_recovery_s", f"must be > 0, got {value!r}")


class Health:
    """Error events of one node and whether it is still within their recovery window.

    Args:
        recovery_s: seconds without an error before the node is healthy again.
        log: logs an error's line (the node's error logger); None: nothing is logged.
        clock: monotonic seconds.
    """

    def __init__(self, recovery_s: float, log: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.recovery_s = recovery_s
        self.log = log
        self.clock = clock
        self.last_error = ""
        self._last_t = -math.inf

    def error(self, reason: str, log: bool = True) -> None:
        """Record an error event now, and log its line (unless ``log`` is False: the caller
        logs it, e.g. rate-limited)."""
        self.last_error, self._last_t = reason, self.clock()
        if log and self.log is not None:
            self.log(reason)

    def active(self) -> str | None:
        """The last error while it is less than ``recovery_s`` old, else None (healthy)."""
        return self.last_error if self.clock() - self._last_t < self.recovery_s else None

    def values(self) -> dict[str, object]:
        """Diagnostics values: the last error ever and its age in seconds ("" before any)."""
        age = self.clock() - self._last_t
        return {"last_error": self.last_error,
                "last_error_age_s": round(age, 1) if math.isfinite(age) else ""}
