"""The supervisor's restart policy, backoff, give-up, stop sequence and stop signals, with real
child processes (tiny ``python -c`` programs). Time is a fake clock wherever a delay is
checked; real time only bounds how long a child may take to exit (generous deadlines)."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from prevla_ros import cli
from prevla_ros.runtime.settings import build
from prevla_ros.runtime.supervisor import (CONFIG_ERROR_EXIT, MAX_DELAY_S, PARENT_ENV,
                                           GraphFailed, NodeSpec, RestartPolicy, StopSignals,
                                           Supervisor, SupervisorConfig, describe_exit)

#: ``-S``: no site packages, so no bootstrap re-exec: the fastest Python there is.
PY = [sys.executable, "-S", "-c"]
EXIT_1 = PY + ["import sys; sys.exit(1)"]
SLEEP = PY + ["import time; time.sleep(120)"]
DEADLINE_S = 30.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead
    except FileNotFoundError:
        return False


def _signal_mask(pid: int, field: str) -> int:
    """A signal mask of ``/proc/<pid>/status`` (``SigCgt`` caught, ``SigIgn`` ignored); 0 if gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1], 16) for line in f if line.startswith(field + ":"))
    except (OSError, StopIteration):
        return 0


def _wait(condition, timeout_s: float = DEADLINE_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


@pytest.fixture
def supervisors():
    made: list[Supervisor] = []

    def make(specs, clock=None, **config) -> Supervisor:
        sup = Supervisor(specs, SupervisorConfig(**config), **({"clock": clock} if clock else {}))
        made.append(sup)
        return sup

    yield make
    for sup in made:
        sup.stop()


def _died(sup: Supervisor, name: str) -> None:
    """Wait (real time) until ``name``'s process has exited; the supervisor is not told yet."""
    pid = sup.pids.get(name)
    assert pid is None or _wait(lambda: name not in sup.pids), f"{name} did not exit"


# --- the policy alone ----------------------------------------------------------------------
def test_delays_double_up_to_max_restarts_then_it_gives_up():
    policy = RestartPolicy(SupervisorConfig(respawn_delay_s=0.5, max_restarts=4))
    policy.started(0.0)
    assert [policy.on_exit(1.0, 1) for _ in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert policy.on_exit(1.0, 1) is None
    assert policy.why_not(1) == ("restarts exhausted: 4 in a row without 60 s of running, "
                                 "max_restarts 4")
    assert policy.total == 4


def test_a_long_enough_run_resets_the_row_and_the_delay():
    policy = RestartPolicy(SupervisorConfig(respawn_delay_s=1.0, max_restarts=2,
                                            respawn_reset_s=60.0))
    policy.started(0.0)
    assert policy.on_exit(10.0, -9) == 1.0
    policy.started(11.0)
    assert policy.on_exit(20.0, -9) == 2.0  # ran 9 s: still in a row
    policy.started(22.0)
    assert policy.on_exit(22.0 + 60.0, -9) == 1.0  # ran 60 s: healthy again
    assert (policy.in_a_row, policy.total) == (1, 3)


def test_the_delay_is_capped():
    policy = RestartPolicy(SupervisorConfig(respawn_delay_s=20.0, max_restarts=10))
    policy.started(0.0)
    delays = [policy.on_exit(0.0, 1) for _ in range(4)]
    assert delays == [20.0, MAX_DELAY_S, MAX_DELAY_S, MAX_DELAY_S]


def test_config_errors_and_respawn_off_are_never_restarted():
    policy = RestartPolicy(SupervisorConfig())
    assert policy.on_exit(0.0, CONFIG_ERROR_EXIT) is None
    assert policy.why_not(CONFIG_ERROR_EXIT) == "a configuration error"
    off = RestartPolicy(SupervisorConfig(respawn=False))
    assert off.on_exit(0.0, -9) is None and off.why_not(-9) == "respawn is off"


def test_exit_descriptions_name_the_signal():
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(-15) == "killed by SIGTERM"
    assert describe_exit(1) == "exited with code 1"


@pytest.mark.parametrize("field,value", [("respawn_delay_s", -1.0), ("max_restarts", -1),
                                         ("respawn_reset_s", float("nan")),
                                         ("stop_timeout_s", 0.0), ("respawn", "yes")])
def test_bad_settings_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"SupervisorConfig.{field}"):
        build(SupervisorConfig, {field: value})


def test_bad_flag_stops_prevla_up_at_startup_naming_it(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["up", "--processes", "--max-restarts", "-2"])
    assert exc.value.code == 2 and "max_restarts" in capsys.readouterr().err


def test_flags_become_the_supervisor_config(monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "cmd_up", lambda args: seen.append(args.supervisor) or 0)
    assert cli.main(["up", "--processes", "--respawn-delay-s", "0.25", "--no-respawn"]) == 0
    assert seen == [SupervisorConfig(respawn=False, respawn_delay_s=0.25)]


# --- real child processes --------------------------------------------------------------------
def test_a_dying_node_is_restarted_with_backoff_then_given_up_on(supervisors, caplog):
    clock = FakeClock()
    sup = supervisors([NodeSpec("flaky_node", EXIT_1), NodeSpec("steady_node", SLEEP)],
                      clock, respawn_delay_s=2.0, max_restarts=3)
    caplog.set_level(logging.INFO, logger="prevla.supervisor")
    sup.start()
    steady = sup.pids["steady_node"]
    for n, delay in enumerate([2.0, 4.0, 8.0], start=1):
        _died(sup, "flaky_node")
        sup.poll()  # notices the death: restart n scheduled in `delay` s
        lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(lines) == n, lines  # one line per death
        assert lines[-1].startswith("flaky_node (pid ") and "exited with code 1" in lines[-1]
        assert f"restart {n}/3 in {delay:.1f} s" in lines[-1]
        clock.now += delay - 0.01
        sup.poll()
        assert "flaky_node" not in sup.pids, "restarted before its delay"
        clock.now += 0.01
        sup.poll()
        starts = [r for r in caplog.records if r.getMessage().startswith("flaky_node started")]
        assert len(starts) == n + 1  # restarted now (it may have exited again already)
    _died(sup, "flaky_node")
    with pytest.raises(GraphFailed) as failed:
        sup.poll()
    assert failed.value.node == "flaky_node" and failed.value.returncode == 1
    assert str(failed.value).startswith("flaky_node (pid ")
    assert "exited with code 1; not restarted (restarts exhausted: 3 in a row" in str(failed.value)
    assert caplog.records[-1].levelno == logging.ERROR
    assert sup.restarts == {"flaky_node": 3, "steady_node": 0}
    assert sup.pids["steady_node"] == steady  # the rest of the graph was never touched


def test_a_killed_node_is_restarted_and_the_line_names_the_signal(supervisors, caplog):
    sup = supervisors([NodeSpec("policy_node", SLEEP)], respawn_delay_s=0.0)
    sup.start()
    old = sup.pids["policy_node"]
    os.kill(old, signal.SIGKILL)
    _died(sup, "policy_node")
    sup.poll()
    assert sup.pids["policy_node"] != old
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert line == f"policy_node (pid {old}) killed by SIGKILL; restart 1/5 in 0.0 s (1 in all)"


def test_a_configuration_error_stops_the_graph_at_once(supervisors):
    bad_config = PY + [f"import sys; sys.exit({CONFIG_ERROR_EXIT})"]
    sup = supervisors([NodeSpec("verifier_node", bad_config)])
    sup.start()
    _died(sup, "verifier_node")
    with pytest.raises(GraphFailed, match=r"verifier_node .*code 2; not restarted \(a config"):
        sup.poll()
    assert sup.restarts == {"verifier_node": 0}


def test_respawn_off_stops_the_graph_naming_the_node(supervisors):
    sup = supervisors([NodeSpec("sim_node", EXIT_1)], respawn=False)
    sup.start()
    _died(sup, "sim_node")
    with pytest.raises(GraphFailed, match=r"sim_node .*code 1; not restarted \(respawn is off"):
        sup.poll()


def test_stop_escalates_sigint_sigterm_sigkill_and_reaps_everyone(supervisors, caplog):
    ignores_int = ("import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                   "time.sleep(120)")
    ignores_both = ignores_int.replace("time.sleep", "signal.signal(signal.SIGTERM, "
                                       "signal.SIG_IGN); time.sleep")
    sup = supervisors([NodeSpec("polite", SLEEP), NodeSpec("deaf_to_int", PY + [ignores_int]),
                       NodeSpec("deaf", PY + [ignores_both])], stop_timeout_s=0.5)
    sup.start()
    pids = dict(sup.pids)
    # Stop only once every child handles its signals as it means to (under load a child can
    # still be starting Python after a fixed sleep): Python catches SIGINT (SigCgt bit 1), the
    # deaf ones ignore SIGINT / SIGINT and SIGTERM (SigIgn bits 1 and 14).
    ready = {"polite": ("SigCgt", 0x2), "deaf_to_int": ("SigIgn", 0x2), "deaf": ("SigIgn", 0x4002)}
    assert _wait(lambda: all(_signal_mask(pids[n], field) & bits == bits for n, (field, bits) in ready.items()))
    sup.stop()
    assert not any(_alive(pid) for pid in pids.values())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(w.startswith("deaf_to_int") and "sending SIGTERM" in w for w in warnings)
    assert any(w.startswith("deaf") and "sending SIGKILL" in w for w in warnings)
    assert not any(w.startswith("polite") for w in warnings)
    sup.poll()  # stopped: nothing is restarted
    assert sup.pids == {} and sup.restarts == {"polite": 0, "deaf_to_int": 0, "deaf": 0}


def test_children_do_not_outlive_a_killed_supervisor(tmp_path):
    # A stand-in supervisor starts a node-like child (run_node's die_with_parent call) and is
    # SIGKILLed: the kernel SIGTERMs the child (PR_SET_PDEATHSIG), no orphan is left.
    child = ("from prevla_ros.runtime.supervisor import die_with_parent; import time; "
             "die_with_parent(); time.sleep(120)")
    parent = (f"import os, subprocess, sys, time; "
              f"p = subprocess.Popen([sys.executable, '-c', {child!r}], "
              f"env={{**os.environ, {PARENT_ENV!r}: str(os.getpid())}}); "
              f"open({str(tmp_path / 'pid')!r}, 'w').write(str(p.pid)); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", parent])
    try:
        assert _wait(lambda: (tmp_path / "pid").exists() and (tmp_path / "pid").read_text())
        pid = int((tmp_path / "pid").read_text())
        time.sleep(1.0)  # past die_with_parent
        assert _alive(pid)
    finally:
        proc.kill()
        proc.wait()
    assert _wait(lambda: not _alive(pid)), "the child outlived its supervisor"


def test_a_child_whose_supervisor_is_already_gone_exits():
    env = {**os.environ, PARENT_ENV: "1"}  # not our parent: the supervisor died before us
    result = subprocess.run([sys.executable, "-c", "from prevla_ros.runtime.supervisor import "
                             "die_with_parent; die_with_parent(); print('survived')"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == -signal.SIGTERM and "survived" not in result.stdout


# --- stop signals ----------------------------------------------------------------------------
def _deliver(sig: int) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(0.05)  # the Python-level handler runs at the next bytecode boundary


def test_a_signal_is_a_stop_request_and_handlers_come_back():
    before = {s: signal.getsignal(s) for s in StopSignals.SIGNALS}
    with StopSignals() as stop:
        _deliver(signal.SIGTERM)
        assert stop.received == "SIGTERM"
        _deliver(signal.SIGINT)  # a second one changes nothing, raises nothing
        assert stop.received == "SIGTERM"
    assert {s: signal.getsignal(s) for s in StopSignals.SIGNALS} == before


def test_a_signal_while_the_graph_is_built_interrupts_it():
    with StopSignals() as stop:
        with pytest.raises(KeyboardInterrupt):
            with stop.interruptible():
                _deliver(signal.SIGTERM)
                time.sleep(5)  # not reached: interrupted
        assert stop.received == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):  # stopped already: nothing more is built
            with stop.interruptible():
                pass
