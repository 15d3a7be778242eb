"""``prevla lifecycle``: ``ros2 lifecycle``'s get / list / set for a pip-only install.

The ``ros2`` CLI is not installable from PyPI; this client calls the same standard
``lifecycle_msgs`` services of any managed node (prevla's or not), so the commands read the
same::

    prevla lifecycle get  /verifier_node               # active [3]
    prevla lifecycle list /verifier_node               # the transitions available now
    prevla lifecycle set  /verifier_node deactivate    # by label, or by id (4)

Exit status: 0 on success, 1 when the node refuses or fails the transition, 2 when the node or
its service does not answer within ``--timeout`` seconds or the arguments are wrong.
"""
from __future__ import annotations

import argparse
import sys

import rclpy
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetAvailableTransitions, GetState
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

NO_ANSWER = 2


class LifecycleClient:
    """Calls one managed node's standard lifecycle services from ``node``."""

    def __init__(self, node: Node, target: str, timeout_s: float) -> None:
        self.node, self.timeout_s = node, timeout_s
        self.target = target if target.startswith("/") else "/" + target

    def _call(self, kind, service: str, request):
        client = self.node.create_client(kind, f"{self.target}/{service}")
        try:
            if not client.wait_for_service(timeout_sec=self.timeout_s):
                raise TimeoutError(f"{self.target}/{service}: no such service (is {self.target} "
                                   "running, and a managed node?)")
            future = client.call_async(request)
            rclpy.spin_until_future_complete(self.node, future, timeout_sec=self.timeout_s)
            if not future.done():
                raise TimeoutError(f"{self.target}/{service}: no answer within {self.timeout_s} s")
            return future.result()
        finally:
            self.node.destroy_client(client)

    def state(self) -> tuple[str, int]:
        s = self._call(GetState, "get_state", GetState.Request()).current_state
        return s.label, int(s.id)

    def transitions(self) -> list[tuple[str, int, str]]:
        """(label, id, goal state) of each transition available now."""
        reply = self._call(GetAvailableTransitions, "get_available_transitions",
                           GetAvailableTransitions.Request())
        return [(t.transition.label, int(t.transition.id), t.goal_state.label)
                for t in reply.available_transitions]

    def change(self, transition: str) -> bool:
        """Trigger ``transition`` (a label such as ``activate``, or its id)."""
        if transition.isdigit():
            tid = int(transition)
        else:
            ids = {label: tid for label, tid, _ in self.transitions()}
            if transition not in ids:
                raise ValueError(f"transition {transition!r} is not available from "
                                 f"{self.state()[0]}; available: {', '.join(ids) or 'none'}")
            tid = ids[transition]
        request = ChangeState.Request(transition=Transition(id=tid))
        return bool(self._call(ChangeState, "change_state", request).success)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prevla lifecycle", description=__doc__.split("\n\n")[0])
    parser.add_argument("verb", choices=["get", "list", "set"])
    parser.add_argument("node", help="the managed node, e.g. /policy_node")
    parser.add_argument("transition", nargs="?", help="set: configure, activate, deactivate, "
                        "cleanup, shutdown (or a transition id)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the node")
    args = parser.parse_args(argv)
    if (args.verb == "set") != (args.transition is not None):
        parser.error("set takes a transition; get and list take none")
    with rclpy.init(signal_handler_options=SignalHandlerOptions.NO):
        node = rclpy.create_node("prevla_lifecycle_client")
        client = LifecycleClient(node, args.node, args.timeout)
        try:
            if args.verb == "get":
                label, sid = client.state()
                print(f"{label} [{sid}]")
            elif args.verb == "list":
                start = client.state()[0]
                for label, tid, goal in client.transitions():
                    print(f"- {label} [{tid}]\n\tStart: {start}\n\tGoal: {goal}")
            else:
                if not client.change(args.transition):
                    print(f"{client.target}: transition {args.transition} failed; now "
                          f"{client.state()[0]} (the node's log and /diagnostics say why)",
                          file=sys.stderr)
                    return 1
                print("Transitioning successful")
        except (TimeoutError, ValueError) as exc:
            print(f"prevla lifecycle: {exc}", file=sys.stderr)
            return NO_ANSWER
        finally:
            node.destroy_node()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
