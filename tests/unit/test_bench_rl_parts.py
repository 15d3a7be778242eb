"""Parts of the D-VLA benchmarks that run without a cluster: bench_memory's arms (the static
pool reallocates nothing after the first update, the naive learner reallocates its gradients
every update) and its reallocation counter; bench_replication's ratios and table on a
hand-made result (the replication itself: tests/unit/test_rl_replication.py)."""
from __future__ import annotations

import pytest
import torch

from prevla_training import bench_memory, bench_replication

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_reallocated_sees_new_replaced_and_same_address_tensors():
    keep = torch.zeros(3)
    gone = torch.zeros(1000)
    before = bench_memory.snapshot({"grad:a": keep, "grad:b": gone, "opt:c:exp_avg": None})
    del gone  # a new tensor may land on the freed address: still a reallocation
    after = {"grad:a": keep, "grad:b": torch.empty(1000), "opt:c:exp_avg": torch.zeros(2)}
    assert bench_memory.reallocated(before, after) == {"grad": 1, "opt": 1}
    assert bench_memory.reallocated(bench_memory.snapshot(after), after) == {"grad": 0, "opt": 0}


@pytest.fixture(scope="module")
def memory_arms():
    threads = torch.get_num_threads()  # RLLearner sets torch's thread count: put it back
    try:
        yield {arm: bench_memory.run_arm(arm, updates=2, batch=4, image_size=128, device="cpu")
               for arm in bench_memory.ARMS}
    finally:
        torch.set_num_threads(threads)


def test_static_pool_reallocates_nothing_and_naive_reallocates_every_update(memory_arms):
    static, naive = memory_arms["static"], memory_arms["naive"]
    assert not static["grads_to_none"] and naive["grads_to_none"]
    n_params = sum(p.requires_grad for p in _zoo_params())
    # static: gradients + AdamW step/exp_avg/exp_avg_sq allocated before the first update
    assert static["pool_tensors"] == 4 * n_params
    assert static["realloc_first"] == 0 and static["realloc_per_update"] == 0
    # naive: everything appears at update 1, then every gradient again at each update
    assert naive["realloc_first"] == naive["pool_tensors"] > 0
    assert naive["realloc_per_update"] > 0
    assert all(r["realloc_opt"] == 0 for r in naive["rows"][1:])  # AdamW state is kept once made
    for arm in (static, naive):
        assert len(arm["rss_after"]) == 2 and arm["peak_rss"] >= max(arm["rss_after"]) > 0
        assert all(r["steps"] >= 1 for r in arm["rows"])
    table = bench_memory.format_table({"arms": [static, naive], "ratios": bench_memory.ratios([static, naive])})
    assert "| static | cpu |" in table and "| naive | cpu |" in table and "| peak RSS |" in table


def _zoo_params():
    from prevla_training.rl.actors import load_actor_critic
    from prevla_training.rl.config import RLConfig

    return list(load_actor_critic(RLConfig())[0].parameters())


def _mode(object_bytes: int, crossing: float, measured, wall: float, enqueue: float) -> dict:
    return {"object_bytes": object_bytes, "bytes_crossing_per_push": crossing,
            "bytes_crossing_measured_per_push": measured, "push_wall_s": [wall, wall],
            "push_wall_s_mean": wall, "enqueue_s_mean": enqueue}


def test_replication_table_and_ratios():
    obj = 5_200_000
    result = {"payload_bytes": 5_192_752, "arrays": 114, "consumers": 6, "pushes": 2, "nodes": 3,
              "consumers_per_node": 2, "topology": _mode(obj, 2 * obj, 2 * obj, 0.05, 0.004),
              "naive": _mode(obj, 4 * obj, None, 0.10, 0.002)}
    result["ratios"] = bench_replication.ratios(result)
    assert result["ratios"] == pytest.approx({"bytes crossing": 2.0, "push wall s": 2.0, "enqueue s": 0.5})
    table = bench_replication.format_table(result)
    lines = table.splitlines()
    assert lines[0].startswith("Payload: 114 arrays, 5.19 MB; 3 nodes x 2 consumers, 2 pushes")
    assert "| topology | 5.20 | 10.40 | 10.40 | 0.0500 | 0.0040 |" in lines
    assert "| naive | 5.20 | 20.80 | n/a | 0.1000 | 0.0020 |" in lines
    assert "| bytes crossing | 2.00x |" in lines and "| enqueue s | 0.50x |" in lines
    assert bench_replication.ratios({"topology": result["topology"]}) == {}


@pytest.mark.gpu
def test_on_a_gpu_the_learner_keeps_its_static_pool_and_its_activation_pool():
    arm = bench_memory.run_arm("static", updates=2, batch=4, image_size=128, device="cuda")
    assert arm["device"] == "cuda" and arm["realloc_per_update"] == 0
    assert arm["cuda_max_allocated"] > 0 and arm["cuda_max_reserved"] >= arm["cuda_max_allocated"]


def test_push_windows_and_the_runner_rate_while_a_push_is_in_flight():
    from prevla_training.bench_rl import push_windows, rate, stall_ratio

    # the learner pushed v1 at t=10 and v2 at t=20; the last server had them at 10.05 and 20.2
    windows = push_windows([(10.0, 10.01), (20.0, 20.01)], [[(0, 1.0), (1, 10.05)], [(1, 10.02), (2, 20.2)]])
    assert windows == [(10.0, 10.05), (20.0, 20.2)]
    timeline = [(9.0, 0), (9.5, 10), (10.02, 20), (12.0, 60), (19.9, 220), (20.1, 224)]
    r = stall_ratio([timeline], windows)
    assert r["pushes"] == 2
    # intervals touching a window: 9.5-10.02 (10 steps), 10.02-12.0 (40), 19.9-20.1 (4): 54 in 2.7 s
    assert r["steps_per_s_during_push"] == pytest.approx(54 / 2.7)
    assert r["steps_per_s_otherwise"] == pytest.approx((10 + 160) / (0.5 + 7.9))
    assert rate([timeline])[0] == pytest.approx(224 / 11.1)


def test_swap_cost_from_the_servers_swap_and_request_logs():
    from prevla_training.bench_rl import swap_cost

    # server 0 swapped at t=2.000 for 5 ms, server 1 at t=5.000 for 7 ms; requests: (end, latency)
    swaps = [[(2.000, 0.005)], [(5.000, 0.007)]]
    requests = [[(1.5, 0.020), (2.010, 0.030), (3.0, 0.022)],  # the 2nd was in flight over the swap
                [(4.990, 0.020), (5.030, 0.040), (6.0, 0.018)]]  # the 1st ended before it began
    w = swap_cost(swaps, requests)
    assert (w["swaps"], w["requests"], w["requests_during_swap"]) == (2, 6, 2)
    assert w["swap_ms_p50"] == pytest.approx(6.0) and w["swap_ms_max"] == pytest.approx(7.0)
    assert w["latency_ms_during_swap_p50"] == pytest.approx(35.0)
    assert w["latency_ms_otherwise_p50"] == pytest.approx(20.0)
    assert w["ratio"] == pytest.approx(1.75)
    assert swap_cost([[]], [[]])["swaps"] == 0
