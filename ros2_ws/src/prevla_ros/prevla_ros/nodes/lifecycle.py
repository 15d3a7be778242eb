"""Managed (lifecycle) nodes: the standard ROS 2 state machine for policy, verifier and world model.

States and what prevla does in each transition (:class:`ManagedNode`; the services are
rclpy's: ``~/change_state``, ``~/get_state``, ``~/get_available_states``,
``~/get_available_transitions``, ``~/get_transition_graph`` and the ``~/transition_event``
topic)::

    unconfigured --configure--> inactive --activate--> active
         ^  <------cleanup------  |  <----deactivate----  |
         +------------ shutdown (from any of the three) --+--> finalized

- *construction*: parameters are declared and validated (a bad one raises ``ValueError``
  naming the field: the process exits 2), outputs are created as lifecycle publishers
  (matched by their peers now, publishing nothing until activated), ``/diagnostics`` starts.
- *configure* (:meth:`ManagedNode.load`): the model is loaded, sha256-checked and warmed up,
  and the node's working state built. A model that cannot be loaded fails the transition
  (FAILURE: the node stays unconfigured, says why in one log line and on /diagnostics).
- *activate*: lifecycle publishers go live, then the input subscriptions (and their timers)
  are created (:meth:`ManagedNode.subscribe_inputs`); latched topics (instruction,
  episode_status) arrive again then.
- *deactivate*: the input subscriptions are destroyed (DDS drops what comes meanwhile: no
  callback runs), in-flight work is dropped (:meth:`ManagedNode.drop_work`), the publishers
  stop; the model stays loaded.
- *cleanup* (:meth:`ManagedNode.unload`): the model and the working state are freed.
- *shutdown*: from any state, does what deactivate and cleanup would; the process then idles
  in ``finalized`` until it is stopped.
- An exception in activate, deactivate or cleanup returns ERROR: ``on_error`` frees
  everything and the node lands in ``unconfigured`` (or ``finalized`` if even that fails).

:func:`bring_up` drives a node to active in-process (``prevla up``, ``--autostart``, tests).
"""
from __future__ import annotations

import gc
import sys
from typing import Callable

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from prevla_ros.nodes.diagnostics import ERROR, WARN

SUCCESS = TransitionCallbackReturn.SUCCESS
FAILURE = TransitionCallbackReturn.FAILURE
#: The primary states (lifecycle_msgs/State labels).
UNCONFIGURED, INACTIVE, ACTIVE, FINALIZED = "unconfigured", "inactive", "active", "finalized"

Status = tuple[bytes, str, dict[str, object]]


class ManagedNode(LifecycleNode):
    """A prevla lifecycle node; subclasses fill in four hooks (see the module docstring).

    Hooks: :meth:`load` (configure; raise to fail it), :meth:`subscribe_inputs` (activate:
    every subscription and timer it creates is destroyed on deactivate), :meth:`drop_work`
    (deactivate) and :meth:`unload` (cleanup; must be safe after a partial :meth:`load`).
    """

    def __init__(self, node_name: str, **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        #: why the last configure failed ("" once one succeeds): reported on /diagnostics
        self.transition_error = ""
        self._inputs: list = []  # subscriptions and timers made by subscribe_inputs

    # --- hooks ----------------------------------------------------------------------------
    def load(self) -> None:
        """Configure: load the model, build the working state; raise with the cause to fail."""

    def subscribe_inputs(self) -> None:
        """Activate: create the input subscriptions and timers (destroyed on deactivate)."""

    def drop_work(self) -> None:
        """Deactivate: drop work in flight (held messages, a pending resampling)."""

    def unload(self) -> None:
        """Cleanup: free the model and the working state (also after a failed configure)."""

    # --- state ----------------------------------------------------------------------------
    @property
    def lifecycle_state(self) -> str:
        """The current state's label: unconfigured, inactive, active, finalized (or a
        transition state such as configuring, while one runs)."""
        return _label(self)

    @property
    def is_active(self) -> bool:
        return self.lifecycle_state == ACTIVE

    def lifecycle_status(self, own: Callable[[], Status]) -> Callable[[], Status]:
        """The node's diagnostics function in every state: ``own()`` while active; WARN
        ``inactive`` (with ``own``'s values) or ``unconfigured``, ERROR naming why the last
        configure failed; always the value ``lifecycle_state``."""
        def status() -> Status:
            state = self.lifecycle_state
            if state == ACTIVE:
                level, message, values = own()
            elif state == INACTIVE:
                _, _, values = own()
                level, message = WARN, "inactive: configured, publishing nothing (activate it)"
            elif state == FINALIZED:
                level, message, values = WARN, "finalized (shut down): stop the process", {}
            elif self.transition_error:
                level, message, values = ERROR, f"{state}: {self.transition_error}", {}
            else:
                level, message, values = WARN, f"{state}: waiting for configure", {}
            return level, message, {"lifecycle_state": state, **values}
        return status

    # --- transitions (rclpy calls these; each logs one line) -------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.load()
        except Exception as exc:  # noqa: BLE001 -- whatever broke, report it the standard way
            self.transition_error = f"configure failed: {exc}"
            self.get_logger().error(
                f"{self.transition_error}; staying unconfigured (fix it, then "
                f"`ros2 lifecycle set {self.get_fully_qualified_name()} configure`)")
            self._quietly(self.unload)
            return FAILURE
        self.transition_error = ""
        self.get_logger().info("configured (inactive)")
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._guarded("activate", self._activate, state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._guarded("deactivate", self._deactivate, state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._guarded("cleanup", self._cleanup, state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        def shutdown(previous: LifecycleState) -> None:
            if previous.label == ACTIVE:
                self._deactivate(previous)
            if previous.label in (ACTIVE, INACTIVE):
                self._cleanup(previous)
        return self._guarded("shutdown", shutdown, state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """After an ERROR: free everything; SUCCESS lands in unconfigured, FAILURE in
        finalized."""
        try:
            self._drop_inputs()
            super().on_deactivate(state)  # the lifecycle publishers: off
            self.unload()
            _release_memory()
        except Exception as exc:  # noqa: BLE001
            self.get_logger().error(f"error processing failed too ({exc}): finalized")
            return FAILURE
        self.get_logger().warning(f"error processed after {state.label}: unconfigured")
        return SUCCESS

    def _activate(self, state: LifecycleState) -> None:
        super().on_activate(state)  # publishers first: an input may be answered at once
        subs, timers = set(self.subscriptions), set(self.timers)
        try:
            self.subscribe_inputs()
        finally:  # tracked even if it failed half-way: on_error destroys what was made
            self._inputs = ([s for s in self.subscriptions if s not in subs]
                            + [t for t in self.timers if t not in timers])
        self.get_logger().info("active")

    def _deactivate(self, state: LifecycleState) -> None:
        self._drop_inputs()
        self.drop_work()
        super().on_deactivate(state)
        self.get_logger().info("deactivated (inactive; the model stays loaded)")

    def _cleanup(self, state: LifecycleState) -> None:
        self.unload()
        _release_memory()
        super().on_cleanup(state)
        self.get_logger().info("cleaned up (unconfigured; the model is freed)")

    def _drop_inputs(self) -> None:
        inputs, self._inputs = self._inputs, []
        for entity in inputs:
            if entity in self.timers:
                self.destroy_timer(entity)
            else:
                self.destroy_subscription(entity)

    def _guarded(self, name: str, step: Callable[[LifecycleState], None],
                 state: LifecycleState) -> TransitionCallbackReturn:
        try:
            step(state)
        except Exception as exc:  # noqa: BLE001 -- reported, then on_error cleans up
            self.get_logger().error(f"{name} failed from {state.label}: "
                                    f"{type(exc).__name__}: {exc}")
            return TransitionCallbackReturn.ERROR
        return SUCCESS

    def _quietly(self, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception as exc:  # noqa: BLE001 -- freeing a half-built state: best effort
            self.get_logger().warning(f"freeing after a failed configure: {exc}")

    def destroy_node(self) -> None:
        """Shut down (frees the model) before the node goes, from whatever state it is in."""
        if self.lifecycle_state in (UNCONFIGURED, INACTIVE, ACTIVE):
            try:
                self.trigger_shutdown()
            except Exception:  # noqa: BLE001 -- the context may be gone already
                pass
        super().destroy_node()


def bring_up(node: LifecycleNode) -> bool:
    """Configure and activate ``node`` in-process (what ``prevla up`` and ``--autostart``
    do); whether it is active. A failed transition has already logged its cause; the node
    stays up in the state the standard machine left it in."""
    if _label(node) == UNCONFIGURED and node.trigger_configure() != SUCCESS:
        return False
    if _label(node) == INACTIVE and node.trigger_activate() != SUCCESS:
        return False
    return _label(node) == ACTIVE


def _label(node: LifecycleNode) -> str:
    """``node``'s current state's label (rclpy has no public getter)."""
    return node._state_machine.current_state[1]


def _release_memory() -> None:
    """Let a freed model's memory go now: Python's cycles, and torch's CUDA cache if used."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
