"""`prevla up` as a user runs it, with the faults a robot meets: each node process SIGKILLed in
turn under ``--processes`` (restarted, named in one line, the episode still finishes), and
SIGINT / SIGTERM to ``prevla up`` itself (exit 0, no traceback, no process left behind).

Short on purpose: the scripted expert with the passthrough verifier, unthrottled control, and
sim_node re-publishing after 2 s (not 10) when a peer died holding its observation."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prevla_interfaces.msg import EpisodeStatus, Verdict

from prevla_ros.nodes.params import STATUS_QOS, STREAM_QOS
from prevla_ros.security import enclave_path

pytestmark = [pytest.mark.ros, pytest.mark.libero]

NODES = ("policy_node", "verifier_node", "sim_node")
UP_S = 180.0  # LIBERO builds in 10-20 s here; generous for a loaded 2-core machine


def _proc_stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()  # [state, ppid, ...]
    except (FileNotFoundError, ProcessLookupError):
        return None


def _alive(pid: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def _children(pid: int) -> dict[str, int]:
    """node name -> pid of ``pid``'s node processes (from /proc)."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _proc_stat(int(entry))) and stat[1] == str(pid):
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except FileNotFoundError:
                continue
            for name in NODES + ("world_model_node",):
                if f"prevla_ros.nodes.{name}".encode() in cmdline:
                    out[name] = int(entry)
    return out


class Up:
    """``prevla up`` in a child process, its output in a file, and a probe on its topics."""

    def __init__(self, ros, tmp_path: Path, *flags: str) -> None:
        params = tmp_path / "params.yaml"
        params.write_text("sim_node:\n  ros__parameters:\n    chunk_timeout_s: 2.0\n")
        self.log = tmp_path / "up.log"
        cmd = [sys.executable, "-m", "prevla_ros.cli", "up", "--policy", "scripted_expert",
               "--verifier", "passthrough", "--control-rate-hz", "0", "--episodes", "0",
               "--params-file", str(params), *flags]
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        self.ros = ros
        self.verdicts: list[Verdict] = []
        self.statuses: list[EpisodeStatus] = []
        probe = ros.node("supervision_probe")
        probe.create_subscription(Verdict, "verdict", self.verdicts.append, STREAM_QOS)
        probe.create_subscription(EpisodeStatus, "episode_status", self.statuses.append,
                                  STATUS_QOS)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, condition, timeout_s: float, what: str) -> None:
        ok = self.ros.wait_for(lambda: condition() or self.proc.poll() is not None, timeout_s)
        assert ok and condition(), f"{what} (rc {self.proc.poll()}):\n{self.text()[-4000:]}"

    def decisions_flow(self, timeout_s: float = UP_S, more: int = 3) -> None:
        n = len(self.verdicts)
        self.wait(lambda: len(self.verdicts) >= n + more, timeout_s, "no decisions")

    def early_in_an_episode(self) -> EpisodeStatus:
        """Wait until an episode has made a few decisions and has most of its steps ahead."""
        def early() -> bool:
            last = self.statuses[-1] if self.statuses else None
            return last is not None and not last.done and 8 <= last.step <= 40
        self.wait(early, 60, "no episode under way")
        return self.statuses[-1]

    def finished(self, since: int, episode: int | None = None) -> EpisodeStatus:
        """The first episode that ends in a status after ``since`` (``episode``: that one)."""
        def ended() -> list[EpisodeStatus]:
            return [s for s in self.statuses[since:]
                    if s.done and episode in (None, s.episode)]
        self.wait(lambda: ended(), 90, f"episode {episode or ''} did not finish")
        return ended()[0]

    def stop(self, sig: int, pids: set[int]) -> None:
        """Send ``sig`` to prevla up; it exits 0, says nothing went wrong, leaves nobody."""
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=60)
        text = self.text()
        assert rc == 0, f"prevla up exited {rc} on {signal.Signals(sig).name}:\n{text[-4000:]}"
        assert "Traceback" not in text and "ExternalShutdownException" not in text, text[-4000:]
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in pids if _alive(p)], "node processes outlived prevla up"

    def close(self) -> None:
        if self.proc.poll() is None:
            for pid in _children(self.proc.pid).values():
                os.kill(pid, signal.SIGKILL)
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def up(ros, tmp_path):
    started = []

    def start(*flags: str) -> Up:
        started.append(Up(ros, tmp_path, *flags))
        return started[-1]

    yield start
    for u in started:
        u.close()


def test_each_node_killed_in_turn_is_restarted_and_the_episodes_go_on(up):
    graph = up("--processes", "--respawn-delay-s", "0.5")
    graph.decisions_flow()
    # each process in its own SROS2 enclave, the one launch/sros2/prevla_policy.xml grants
    probe = graph.ros.node("enclave_probe")
    enclaves = {n: e for n, _, e in probe.get_node_names_and_namespaces_with_enclaves()}
    assert {n: enclaves.get(n) for n in NODES} == {n: enclave_path(n) for n in NODES}, enclaves
    seen: set[int] = set()
    for name in NODES:
        running = graph.early_in_an_episode()
        before = _children(graph.proc.pid)
        assert set(before) == set(NODES), before
        seen |= set(before.values())
        since = len(graph.statuses)
        os.kill(before[name], signal.SIGKILL)
        line = f"{name} (pid {before[name]}) killed by SIGKILL; restart 1/5"
        graph.wait(lambda: line in graph.text(), 30, f"no restart line for {name}")
        graph.wait(lambda: _children(graph.proc.pid).get(name, before[name]) != before[name],
                   30, f"{name} not restarted")
        # The rest of the graph rode through: the same processes, decisions flow again, and the
        # episode the policy or the verifier died in runs to its end (a new sim starts anew).
        after = _children(graph.proc.pid)
        assert {n: p for n, p in after.items() if n != name} == \
            {n: p for n, p in before.items() if n != name}
        seen |= set(after.values())
        graph.decisions_flow(timeout_s=UP_S if name == "sim_node" else 60)
        status = graph.finished(since, None if name == "sim_node" else running.episode)
        assert status.state in ("success", "timeout"), status
    assert graph.text().count("killed by SIGKILL; restart") == len(NODES)  # one line per death
    graph.stop(signal.SIGINT, seen)


@pytest.mark.parametrize("flags,sig", [(("--processes",), signal.SIGTERM),
                                       ((), signal.SIGINT), ((), signal.SIGTERM)],
                         ids=["processes-SIGTERM", "composed-SIGINT", "composed-SIGTERM"])
def test_a_stop_signal_exits_0_and_leaves_no_process(up, flags, sig):
    graph = up(*flags)
    graph.decisions_flow(more=1)  # the graph is up and spinning
    pids = set(_children(graph.proc.pid).values())
    assert len(pids) == (3 if flags else 0)
    graph.stop(sig, pids)
