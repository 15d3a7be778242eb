"""The node processes of a graph, supervised (ROS-free): what ``prevla up --processes`` runs.

A node process that dies is restarted, the way a launch file's ``respawn`` does it, with two
bounds a robot needs: the delay before a restart doubles with each restart in a row
(``respawn_delay_s``, 2x, 4x, ... up to :data:`MAX_DELAY_S`), and after ``max_restarts``
restarts in a row the supervisor gives up and the graph stops with an error naming the node.
A run of ``respawn_reset_s`` or longer ends a row: a node that dies once an hour is restarted
every time, one that crashes at startup is given up on after ``max_restarts`` tries. A node
that exits with :data:`CONFIG_ERROR_EXIT` (a bad parameter) is never restarted: it would fail
the same way. Each death is one log line naming the node, its exit code or signal and the
restart count; peers are not told — they ride through (the sim re-publishes its observation
after its chunk timeout, the verifier holds, latched topics reach the new process).

Stopping (:meth:`Supervisor.stop`) is launch's too: SIGINT to every node, SIGTERM to those
still running ``stop_timeout_s`` later, SIGKILL after as long again; every child is reaped.
Children run in their own session, so a terminal's Ctrl-C reaches only the supervisor (which
stops them in order, never restarting one that is on its way out), and ask the kernel to
SIGTERM them if the supervisor itself dies (:func:`die_with_parent`): no orphans, even after a
SIGKILL of the supervisor.

:class:`StopSignals` turns SIGINT and SIGTERM into a stop request that a loop polls, so a
signal never lands in the middle of an executor's callback or of the shutdown itself.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from prevla_ros.runtime.settings import check, setting

logger = logging.getLogger("prevla.supervisor")

#: The exit code of a node whose configuration is invalid (``run_node``): never restarted.
CONFIG_ERROR_EXIT = 2
#: Longest delay before a restart, however many restarts came before.
MAX_DELAY_S = 30.0
#: Environment variable naming the supervisor's pid to a child (see :func:`die_with_parent`).
PARENT_ENV = "PREVLA_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1


@dataclass
class SupervisorConfig:
    """How ``prevla up --processes`` supervises its node processes (the launch file declares
    the same respawn policy: ``respawn``, ``respawn_delay``, ``respawn_max_retries``)."""

    respawn: bool = setting(
        "restart a node process that exits or is killed while the graph runs (false: the "
        "first death stops the graph, exit code 1, naming the node)", True)
    respawn_delay_s: float = setting(
        "seconds before a dead node is restarted; doubles with each further restart in a row "
        f"(at most {MAX_DELAY_S:.0f} s)", 1.0)
    max_restarts: int = setting(
        "restarts of one node in a row (each after a run shorter than respawn_reset_s); its "
        "next death stops the graph, exit code 1, naming the node", 5)
    respawn_reset_s: float = setting(
        "a node that has run this many seconds since its last start is healthy again: its "
        "restart count and delay start over when it next dies", 60.0)
    stop_timeout_s: float = setting(
        "on shutdown each node gets SIGINT, SIGTERM this many seconds later if still running, "
        "and SIGKILL after as long again", 5.0)

    def __post_init__(self) -> None:
        n = type(self).__name__
        check(isinstance(self.respawn, bool), n, "respawn",
              f"must be true or false, got {self.respawn!r}")
        for name in ("respawn_delay_s", "respawn_reset_s"):
            value = getattr(self, name)
            check(isinstance(value, (int, float)) and math.isfinite(value) and value >= 0, n,
                  name, f"must be >= 0, got {value!r}")
        check(isinstance(self.max_restarts, int) and self.max_restarts >= 0, n,
              "max_restarts", f"must be an integer >= 0, got {self.max_restarts!r}")
        value = self.stop_timeout_s
        check(isinstance(value, (int, float)) and math.isfinite(value) and value > 0, n,
              "stop_timeout_s", f"must be > 0, got {value!r}")


class GraphFailed(RuntimeError):
    """A node died and was not restarted: the graph stops. ``node`` names it."""

    def __init__(self, node: str, returncode: int, message: str) -> None:
        super().__init__(message)
        self.node, self.returncode = node, returncode


def describe_exit(returncode: int) -> str:
    """``exited with code 1`` / ``killed by SIGKILL`` (Popen's negative return codes)."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


class RestartPolicy:
    """Whether, and after how long, one node is restarted when it dies (pure; times in s).

    Args:
        config: the respawn settings.
    """

    def __init__(self, config: SupervisorConfig) -> None:
        self.config = config
        self.in_a_row = 0  # restarts since the node last ran respawn_reset_s
        self.total = 0  # restarts since the graph started
        self._started_at: float | None = None

    def started(self, now: float) -> None:
        self._started_at = now

    def on_exit(self, now: float, returncode: int) -> float | None:
        """Seconds to wait before the restart, or None: do not restart (see :meth:`why_not`)."""
        if self._started_at is not None and now - self._started_at >= self.config.respawn_reset_s:
            self.in_a_row = 0
        if self.why_not(returncode):
            return None
        delay = min(self.config.respawn_delay_s * 2.0 ** self.in_a_row, MAX_DELAY_S)
        self.in_a_row += 1
        self.total += 1
        return delay

    def why_not(self, returncode: int) -> str:
        """Why a death with ``returncode`` is not restarted now; "" when it is."""
        c = self.config
        if returncode == CONFIG_ERROR_EXIT:
            return "a configuration error"
        if not c.respawn:
            return "respawn is off"
        if self.in_a_row >= c.max_restarts:
            return (f"restarts exhausted: {self.in_a_row} in a row without {c.respawn_reset_s:g} "
                    f"s of running, max_restarts {c.max_restarts}")
        return ""


@dataclass
class NodeSpec:
    """One supervised process: its name (for the logs) and its command line."""

    name: str
    argv: Sequence[str]


class _Child:
    def __init__(self, spec: NodeSpec, config: SupervisorConfig) -> None:
        self.spec, self.policy = spec, RestartPolicy(config)
        self.proc: subprocess.Popen | None = None
        self.restart_at: float | None = None


class Supervisor:
    """Starts node processes, restarts the ones that die, stops them all in order.

    Call :meth:`poll` often (``prevla up`` does between two executor spins): it notices deaths,
    schedules restarts and runs the ones due, and raises :class:`GraphFailed` when a node is
    not restarted. Nothing blocks but :meth:`stop`.

    Args:
        specs: the processes, started in this order.
        config: the respawn policy and the stop timeout.
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(self, specs: Sequence[NodeSpec], config: SupervisorConfig | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or SupervisorConfig()
        self.clock = clock
        self._children = [_Child(s, self.config) for s in specs]
        self._stopping = False

    def start(self) -> None:
        for child in self._children:
            self._spawn(child)

    @property
    def pids(self) -> dict[str, int]:
        """name -> pid of every node process running now."""
        return {c.spec.name: c.proc.pid for c in self._children
                if c.proc is not None and c.proc.poll() is None}

    @property
    def restarts(self) -> dict[str, int]:
        """name -> restarts since the start."""
        return {c.spec.name: c.policy.total for c in self._children}

    def poll(self) -> None:
        """Notice deaths and restart the nodes that are due; :class:`GraphFailed` on give-up."""
        if self._stopping:
            return
        now = self.clock()
        for child in self._children:
            if child.proc is not None and child.proc.poll() is not None:
                self._on_exit(child, now)
            if child.restart_at is not None and now >= child.restart_at:
                child.restart_at = None
                self._spawn(child)

    def _spawn(self, child: _Child) -> None:
        env = {**os.environ, PARENT_ENV: str(os.getpid())}
        # Own session: a terminal's Ctrl-C reaches the supervisor alone, which stops the
        # children in order (and restarts none of them meanwhile).
        child.proc = subprocess.Popen(list(child.spec.argv), env=env, start_new_session=True)
        child.policy.started(self.clock())
        logger.info(f"{child.spec.name} started (pid {child.proc.pid})")

    def _on_exit(self, child: _Child, now: float) -> None:
        proc, child.proc = child.proc, None
        rc, name = proc.returncode, child.spec.name
        delay = child.policy.on_exit(now, rc)
        what = f"{name} (pid {proc.pid}) {describe_exit(rc)}"
        if delay is None:
            message = f"{what}; not restarted ({child.policy.why_not(rc)}): stopping the graph"
            logger.error(message)
            raise GraphFailed(name, rc, message)
        child.restart_at = now + delay
        logger.warning(f"{what}; restart {child.policy.in_a_row}/{self.config.max_restarts} "
                       f"in {delay:.1f} s ({child.policy.total} in all)")

    def stop(self) -> None:
        """SIGINT, then SIGTERM, then SIGKILL (``stop_timeout_s`` apart) until none is left."""
        self._stopping = True
        for child in self._children:
            child.restart_at = None
        running = [c for c in self._children if c.proc is not None and c.proc.poll() is None]
        for sig, next_sig in ((signal.SIGINT, "SIGTERM"), (signal.SIGTERM, "SIGKILL")):
            for child in running:
                _signal(child.proc, sig)
            running = self._wait(running, self.config.stop_timeout_s)
            for child in running:
                logger.warning(f"{child.spec.name} (pid {child.proc.pid}) still running "
                               f"{self.config.stop_timeout_s:g} s after {sig.name}; "
                               f"sending {next_sig}")
        for child in running:
            child.proc.kill()
        for child in self._children:
            if child.proc is not None:
                child.proc.wait()  # reaped: no zombie either

    def _wait(self, children: list[_Child], timeout_s: float) -> list[_Child]:
        """The ones of ``children`` still running after up to ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            running = [c for c in children if c.proc.poll() is None]
            if not running or time.monotonic() >= deadline:
                return running
            time.sleep(0.05)


def _signal(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)


class StopSignals:
    """SIGINT and SIGTERM as a stop request: ``received`` names the first signal.

    Inside :meth:`interruptible` (a graph being built) a signal also raises
    ``KeyboardInterrupt`` at once, as Python does by default; elsewhere it only sets
    ``received``, which the executor loop polls, so shutdown runs once, in order, and a second
    signal cannot interrupt it. Handlers are restored on exit.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: str | None = None
        self._interrupt = False
        self._old: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        if self.received:
            raise KeyboardInterrupt
        self._interrupt = True
        try:
            yield
        finally:
            self._interrupt = False

    def _handle(self, signum: int, frame) -> None:
        first = self.received is None
        if first:
            self.received = signal.Signals(signum).name
        if first and self._interrupt:
            self._interrupt = False
            raise KeyboardInterrupt


def die_with_parent(env: dict[str, str] | os._Environ = os.environ) -> None:
    """In a supervised child: ask Linux to SIGTERM this process when the supervisor dies.

    A no-op unless ``env`` names the supervisor's pid (:data:`PARENT_ENV`) and on non-Linux
    systems. If the supervisor died before this call, the process terminates itself.
    """
    parent = env.get(PARENT_ENV, "")
    if not parent.isdigit() or not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != int(parent):
        os.kill(os.getpid(), signal.SIGTERM)
