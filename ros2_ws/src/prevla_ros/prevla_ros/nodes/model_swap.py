"""Hot-swapping a node's model behind ROS: the ``~/swap_model`` service and the
``checkpoint`` / ``backend`` / ``device`` parameters (:class:`ModelSwapper`)."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable

from prevla_interfaces.srv import SwapModel
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.task import Future

from prevla_ros.nodes.params import on_config_change
from prevla_ros.runtime.engines import BACKENDS, ModelSlot
from prevla_ros.runtime.engines.slot import Staged
from prevla_ros.runtime.settings import flatten

#: Parameters whose change hot-swaps the model; a node's other parameters are startup-only.
MODEL_FIELDS = ("checkpoint", "backend", "device")


@dataclass
class _Swap:
    """One swap in flight: what to load, and how it went (written by the loading thread)."""

    checkpoint: str
    backend: str
    device: str
    sha256: str
    revert: dict[str, object] | None  # parameter values to restore if it fails (None: service)
    future: Future = field(default_factory=Future)
    staged: Staged | None = None
    error: str = ""
    load_ms: float = 0.0
    cancelled: bool = False  # the node was cleaned up meanwhile: nothing is installed
    done: threading.Event = field(default_factory=threading.Event)


class ModelSwapper:
    """A node's model (:class:`~prevla_ros.runtime.engines.ModelSlot`) behind ROS.

    Loads the model of ``node.config`` (``checkpoint``, ``backend``, ``device``) when the node
    is configured (:meth:`load`), frees it on cleanup (:meth:`unload`) and, in between, hot-swaps it on a ``~/swap_model`` request (prevla_interfaces/SwapModel) or a change of
    those parameters; the node's other parameters become startup-only. The replacement is
    loaded, checked (its sha256 against its record: an unverified file is refused unless the
    node's ``allow_unverified_models``) and warmed up in a background thread while the old
    model keeps serving;
    a guard condition then switches to it on the executor thread, between two messages
    (the guard shares the node's default callback group with the message callbacks).
    A failed swap keeps the old model, logs why, answers ``success=false`` and, for a
    parameter change, sets the parameters back. One swap at a time: another is refused. An
    unconfigured node has no model to swap: the service refuses, and a parameter change is
    accepted as is and loaded by the next configure.

    Args:
        node: the node; its ``config`` dataclass has the ``MODEL_FIELDS``.
        slot: the node's model slot (kind and adapter builder).
        install: puts a committed adapter where the node's callbacks use it.
        refusal: why this node has no model to swap (e.g. passthrough verifier), else None.
    """

    def __init__(self, node: Node, slot: ModelSlot, install: Callable[[object], None],
                 refusal: str | None = None) -> None:
        self.node = node
        self.slot = slot
        self.install = install
        self.refusal = refusal
        self.swaps = 0
        self._swap: _Swap | None = None  # touched on the executor thread only
        self._quiet = False  # the swapper itself sets parameters: no swap for those
        self._guard = node.create_guard_condition(self._finish)
        # Reentrant: a second request runs (and is refused) while the first one awaits.
        node.create_service(SwapModel, "~/swap_model", self._on_request,
                            callback_group=ReentrantCallbackGroup())
        on_config_change(node, lambda: node.config, self._on_parameters)

    @property
    def busy(self) -> bool:
        return self._swap is not None

    def load(self) -> object:
        """The configured model's adapter, loaded now (the node's configure transition).

        Raises:
            RuntimeError: the model cannot be loaded; the message names the checkpoint and why.
        """
        c = self.node.config
        try:
            staged = self.slot.prepare(c.checkpoint, c.backend, c.device,
                                       allow_unverified=self._allow_unverified())
        except Exception as exc:  # noqa: BLE001 -- whatever broke: the configure fails, saying why
            raise RuntimeError(f"{self.slot.kind} model {c.checkpoint or '(zoo default)'} "
                               f"unusable: {exc}") from exc
        self.slot.commit(staged)
        self._log_loaded(staged, "loaded")
        return staged.adapter

    def unload(self) -> None:
        """Free the model (the node's cleanup); a swap in flight is cancelled (its caller is
        answered ``success=false``; what it loads is dropped)."""
        if self._swap is not None:
            self._swap.cancelled = True
        self.slot.loaded = self.slot.adapter = None

    def values(self) -> dict[str, object]:
        """Diagnostics values: the running model, whether it is verified, the swaps so far."""
        m = self.slot.loaded
        return {"backend": m.backend if m else "none", "model": m.name if m else "none",
                "sha256": m.sha256[:12] if m else "",
                "verified": ("none" if m is None else "UNVERIFIED" if m.unverified else "yes"),
                "swaps": self.swaps, "swapping": self.busy}

    def _allow_unverified(self) -> bool:
        """The node's opt-in to model files whose sha256 matches no record (startup-only)."""
        return bool(self.node.config.artifacts.allow_unverified_models)

    # --- starting a swap (executor thread) ------------------------------------------------
    def _begin(self, checkpoint: str, backend: str, device: str, sha256: str,
               revert: dict[str, object] | None) -> _Swap | str:
        """Start loading in the background; a refusal reason if no swap can start now."""
        if self.refusal:
            return self.refusal
        if self.slot.loaded is None:
            return ("no model is loaded (the node is not configured): set the parameters, "
                    "then configure it")
        if self._swap is not None:
            s = self._swap
            return (f"a model swap is in progress ({s.checkpoint or '(zoo default)'} on "
                    f"{s.backend}); try again when it has finished")
        swap = self._swap = _Swap(checkpoint, backend, device, sha256, revert)
        threading.Thread(target=self._prepare, args=(swap,), daemon=True,
                         name=f"{self.node.get_name()}-swap").start()
        return swap

    def _prepare(self, swap: _Swap) -> None:
        """Background thread: load, check, warm up; then wake the executor."""
        t0 = time.perf_counter()
        try:
            swap.staged = self.slot.prepare(swap.checkpoint, swap.backend, swap.device,
                                            expected_sha256=swap.sha256,
                                            allow_unverified=self._allow_unverified())
        except Exception as exc:  # noqa: BLE001 -- reported to the caller, old model kept
            swap.error = str(exc) or type(exc).__name__
        swap.load_ms = 1000 * (time.perf_counter() - t0)
        swap.done.set()
        try:
            self._guard.trigger()
        except Exception:  # noqa: BLE001 -- the node was destroyed meanwhile
            pass

    async def _on_request(self, request, response):
        backend = request.backend or self.node.config.backend
        if backend not in BACKENDS:
            swap: _Swap | str = f"backend must be one of {BACKENDS} or empty, got {backend!r}"
        else:
            swap = self._begin(request.checkpoint, backend, self.node.config.device,
                               request.sha256.strip(), None)
        if isinstance(swap, str):
            response.success, response.message = False, f"refused: {swap}"
            self.node.get_logger().warning(f"model swap {response.message}")
            return response
        await swap.future  # completed by _finish, between two messages
        response.success = swap.staged is not None and not swap.error
        response.message = "swapped" if response.success else f"kept the old model: {swap.error}"
        response.load_ms = swap.load_ms
        if response.success:
            m = swap.staged.loaded
            response.model, response.backend, response.sha256 = m.name, m.backend, m.sha256
        return response

    def _on_parameters(self, old, new) -> str | None:
        before, after = flatten(old), flatten(new)
        changed = [name for name in before if before[name] != after[name]]
        startup_only = [name for name in changed if name not in MODEL_FIELDS]
        if startup_only:  # a run-time setting this swapper does not apply (the rest are read-only)
            return f"{', '.join(startup_only)} can only be set at startup (restart the node)"
        if not changed or self._quiet:
            return None
        if self.slot.loaded is None and not self.refusal:  # unconfigured: used by configure
            self.node.config = new
            return None
        swap = self._begin(new.checkpoint, new.backend, new.device, "",
                           {f: getattr(old, f) for f in changed})
        return swap if isinstance(swap, str) else None

    # --- finishing it (executor thread, between two messages) -----------------------------
    def _finish(self) -> None:
        swap = self._swap
        if swap is None or not swap.done.is_set():
            return
        self._swap = None
        log = self.node.get_logger()
        if swap.cancelled:
            swap.error, swap.staged = "cancelled: the node was cleaned up meanwhile", None
        if swap.staged is not None and not swap.error:
            try:
                self.install(swap.staged.adapter)
            except Exception as exc:  # noqa: BLE001 -- the old adapter is still installed
                swap.error = f"cannot install the new model: {exc}"
        if swap.staged is not None and not swap.error:
            self.slot.commit(swap.staged)
            self.swaps += 1
            settings = {"checkpoint": swap.checkpoint, "backend": swap.backend,
                        "device": swap.device}
            self.node.config = replace(self.node.config, **settings)
            self._set_quietly(settings)  # a service swap: the parameters tell the truth
            self._log_loaded(swap.staged, f"swapped in after {swap.load_ms:.0f} ms:")
        else:
            log.error(f"model swap to {swap.checkpoint or '(zoo default)'} on {swap.backend} "
                      f"failed, the old model keeps serving: {swap.error}")
            if swap.revert:
                self._set_quietly(swap.revert)
        swap.future.set_result(swap)

    def _set_quietly(self, values: dict[str, object]) -> None:
        self._quiet = True  # no swap for our own parameter writes
        try:
            self.node.set_parameters([Parameter(k, value=v) for k, v in values.items()])
        finally:
            self._quiet = False

    def _log_loaded(self, staged: Staged, verb: str) -> None:
        """One line per load: a warning when a broken artifact fell back or the file is
        unverified (loaded by the opt-in), else info."""
        m = staged.loaded
        skipped = "".join(f"; skipped {note}" for note in m.notes)
        unverified = (f"; UNVERIFIED (allow_unverified_models is true): {m.unverified}"
                      if m.unverified else "")
        fell_back = f" (fell back: {len(m.fallbacks)} broken artifact(s) skipped)" if m.fallbacks else ""
        log = self.node.get_logger()
        (log.warning if m.fallbacks or m.unverified else log.info)(
            f"{self.slot.kind} model {verb} {m.name} on {m.backend} ({m.device}){fell_back}, "
            f"sha256 {m.sha256}, warm-up {staged.warmup_ms:.1f} ms{skipped}{unverified}")
