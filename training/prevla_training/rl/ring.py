"""The rollout ring: D-VLA's data plane between env runners and the learner.

Runners put whole trajectories (an *item*, with its size ``n`` in decisions and the policy
``version`` that produced it); the learner gets at least ``min_n`` decisions at a time,
oldest first. Two rules keep the loop honest:

* **Fixed capacity, counted in decisions.** Nothing grows without bound: a ``put`` that does
  not fit waits until a ``get`` (or a stale drop) makes room. Because a Ray actor call
  returns only when the method does, ``ray.get(ring.put.remote(...))`` blocks the runner:
  that wait *is* the backpressure, and the ring counts the time producers spent in it.
* **Bounded lag.** :meth:`Ring.set_version` records the learner's version; an item whose
  version is older than ``version - max_lag`` is dropped (and counted, in items and in
  decisions) wherever it is seen: on ``put``, on ``set_version`` and on ``get``.

:class:`Ring` holds the logic in plain Python (unit-testable without Ray, no waiting);
:class:`RingActor` wraps it in an asyncio actor (one ``asyncio.Condition`` wakes producers
and consumers); ``RolloutRing`` is that actor as a Ray remote class, built on first access so
this module imports without Ray::

    from prevla_training.rl.ring import RolloutRing
    ring = RolloutRing.options(name="ring").remote(capacity=512, max_lag=2)
    ray.get(ring.put.remote(traj, version, n))     # blocks while the ring is full
    items = ray.get(ring.get.remote(256, 30.0))      # >= 256 decisions, or what came by 30 s
"""
from __future__ import annotations

import asyncio
import operator
import time
from collections import deque
from dataclasses import dataclass
from typing import Any


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int, got {value!r}")
    try:
        return operator.index(value)  # int, numpy integers; not floats
    except TypeError:
        raise ValueError(f"{name} must be an int, got {value!r}") from None


@dataclass
class _Entry:
    item: Any
    version: int
    n: int


class Ring:
    """Bounded FIFO of (item, version, n); capacity and occupancy in decisions."""

    def __init__(self, capacity: int, max_lag: int) -> None:
        if int(capacity) < 1:
            raise ValueError(f"capacity must be >= 1 decision, got {capacity}")
        if int(max_lag) < 0:
            raise ValueError(f"max_lag must be >= 0 versions, got {max_lag}")
        self.capacity, self.max_lag = int(capacity), int(max_lag)
        self.version = 0
        self._items: deque[_Entry] = deque()  # never more than `capacity` entries (n >= 1)
        self.occupancy = 0
        self.counters = dict(puts=0, gets=0, put_decisions=0, got_decisions=0, blocked_puts=0,
                             blocked_s=0.0, dropped_stale_items=0, dropped_stale_decisions=0,
                             max_occupancy=0)

    def check(self, version: int, n: int) -> tuple[int, int]:
        """(version, n) as ints; ValueError if they are not, or the item could never fit."""
        version, n = _as_int("version", version), _as_int("n", n)
        if n < 1:
            raise ValueError(f"n must be >= 1 (decisions in the item), got {n}")
        if n > self.capacity:
            raise ValueError(f"n={n} decisions exceeds the ring capacity {self.capacity}: "
                             "the item could never fit (split the trajectory or raise capacity)")
        return version, n

    def stale(self, version: int) -> bool:
        return version < self.version - self.max_lag

    def fits(self, n: int) -> bool:
        return self.occupancy + n <= self.capacity

    def add(self, item: Any, version: int, n: int) -> bool:
        """Store one item; False (and counted) if it is already stale. Needs :meth:`fits`."""
        version, n = self.check(version, n)
        if self.stale(version):
            self._count_drop(n)
            return False
        if not self.fits(n):
            raise RuntimeError(f"no room for n={n}: occupancy {self.occupancy}/{self.capacity}")
        self._items.append(_Entry(item, version, n))
        self.occupancy += n
        self.counters["puts"] += 1
        self.counters["put_decisions"] += n
        self.counters["max_occupancy"] = max(self.counters["max_occupancy"], self.occupancy)
        return True

    def set_version(self, version: int) -> int:
        """Record the learner's version and drop what became stale. Returns decisions dropped."""
        self.version = max(self.version, _as_int("version", version))  # the learner never goes back
        return self.drop_stale()

    def drop_stale(self) -> int:
        if not any(self.stale(e.version) for e in self._items):
            return 0
        keep: deque[_Entry] = deque()
        dropped = 0
        for e in self._items:
            if self.stale(e.version):
                dropped += e.n
                self._count_drop(e.n)
            else:
                keep.append(e)
        self._items = keep
        self.occupancy -= dropped
        return dropped

    def _count_drop(self, n: int) -> None:
        self.counters["dropped_stale_items"] += 1
        self.counters["dropped_stale_decisions"] += n

    def take(self, min_n: int) -> list:
        """Pop whole items, oldest first, until >= ``min_n`` decisions (or the ring is empty)."""
        self.drop_stale()
        out, got = [], 0
        while self._items and got < min_n:
            e = self._items.popleft()
            self.occupancy -= e.n
            got += e.n
            out.append(e.item)
        self.counters["gets"] += 1
        self.counters["got_decisions"] += got
        return out

    def stats(self) -> dict:
        return {**self.counters, "occupancy": self.occupancy, "items": len(self._items),
                "capacity": self.capacity, "max_lag": self.max_lag, "version": self.version}


class RingActor:
    """The asyncio wrapper around :class:`Ring`; use it through ``RolloutRing`` (module doc)."""

    def __init__(self, capacity: int, max_lag: int) -> None:
        self._ring = Ring(capacity, max_lag)
        self._cond = asyncio.Condition()  # binds to the actor's event loop on first use

    async def put(self, item: Any, version: int, n: int) -> None:
        """Store ``item``; waits while the ring has no room for ``n`` decisions (backpressure)."""
        version, n = self._ring.check(version, n)
        async with self._cond:
            t0 = None
            while not self._ring.stale(version) and not self._ring.fits(n):
                if t0 is None:
                    t0 = time.monotonic()
                    self._ring.counters["blocked_puts"] += 1
                await self._cond.wait()
            if t0 is not None:
                self._ring.counters["blocked_s"] += time.monotonic() - t0
            self._ring.add(item, version, n)
            self._cond.notify_all()

    async def set_version(self, version: int) -> int:
        """The learner's current version; drops stale items (returns decisions dropped)."""
        async with self._cond:
            dropped = self._ring.set_version(version)
            self._cond.notify_all()  # room for producers; also re-checks stale waiting puts
            return dropped

    async def get(self, min_n: int, timeout_s: float) -> list:
        """At least ``min_n`` decisions of whole items, oldest first; after ``timeout_s``
        whatever is there (possibly nothing)."""
        min_n = _as_int("min_n", min_n)
        if not 1 <= min_n <= self._ring.capacity:
            raise ValueError(f"min_n must be in [1, capacity={self._ring.capacity}] decisions, "
                             f"got {min_n}")
        if not timeout_s >= 0:
            raise ValueError(f"timeout_s must be >= 0, got {timeout_s!r}")
        deadline = time.monotonic() + float(timeout_s)
        async with self._cond:
            while self._ring.occupancy < min_n:  # stale items left at set_version
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(self._cond.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            items = self._ring.take(min_n)
            self._cond.notify_all()  # wake the producers waiting for room
            return items

    async def stats(self) -> dict:
        return self._ring.stats()


def __getattr__(name: str):
    """``RolloutRing``: :class:`RingActor` as a Ray remote class (Ray imported on first use)."""
    if name == "RolloutRing":
        import ray

        cls = ray.remote(num_cpus=0, max_concurrency=1000)(RingActor)
        globals()["RolloutRing"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
