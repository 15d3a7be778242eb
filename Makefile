# prevla — the README's commands. Everything installs into ./.venv; re-running is a no-op
# when nothing changed (stamp files track the lock file, the interfaces and pyproject).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
IFACES := ros2_ws/src/prevla_interfaces
IFACE_SRC := $(wildcard $(IFACES)/msg/*.msg $(IFACES)/srv/*.srv) $(IFACES)/CMakeLists.txt $(IFACES)/package.xml
export MUJOCO_GL ?= egl
export PYTHONUNBUFFERED := 1

.PHONY: install demo up test test-fast ceiling critic value-labels train-verifier-value closed-loop expert-eval verifier-data train-verifier train-world-model export bench bench-verifier bench-engines bench-scheduler bench-world-model soak rl bench-rl clean help
help:
	@echo "make demo    install (if needed) and run a LIBERO-Spatial episode through the ROS 2 nodes"
	@echo "make test    install (if needed) and run the test suite"
	@echo "make expert-eval   measure the scripted expert on LIBERO-Spatial and -Object"
	@echo "make verifier-data label verifier candidates by branching LIBERO-Spatial rollouts (~45 min)"
	@echo "make train-verifier train the verifier and its three ablations, print the table"
	@echo "make bench-verifier time scoring K = 1, 4, 8, 16 candidates (torch eager, CPU)"
	@echo "make bench-engines time verifier / VLA per backend: torch eager vs ONNX Runtime (vs TensorRT on a GPU)"
	@echo "make bench-scheduler decision time of 3 rejected rounds: sequential vs preemptive (overlap)"
	@echo "make train-world-model train the world model on demos + VLA rollouts (~20 min)"
	@echo "make bench-world-model imagination error over horizon, verifier-gated vs ungated, in LIBERO"
	@echo "make export        export the zoo's default VLA and verifier to ONNX (parity-checked, into models/zoo)"
	@echo "make soak          run the graph (--processes) for SOAK_MIN minutes: RSS, latency p50/p99, losses per node"
	@echo "make critic / value-labels / train-verifier-value   the all-task critic, its labels, the verifier distilled from them"
	@echo "make rl            D-VLA: fine-tune the zoo VLA with async PPO on a local Ray (RL_ARGS: prevla rl options)"
	@echo "make bench-rl      D-VLA: async vs sync throughput, weight replication, learner memory (tables + JSON)"

$(PY):
	$(PYTHON) -m venv $(VENV)

# openpi-client declares numpy<2 but runs on the locked numpy 2 (its needs are in the lock):
# the tests drive the policy server with the real client, installed without its pins.
$(VENV)/.deps: requirements/lock.txt | $(PY)
	$(PIP) install -q --upgrade pip==26.3
	$(PIP) install -q -r requirements/lock.txt
	$(PIP) install -q --no-deps openpi-client==0.1.2
	touch $@

$(VENV)/.interfaces: $(IFACE_SRC) $(VENV)/.deps
	mkdir -p build
	AMENT_PREFIX_PATH=$(abspath $(VENV)) PATH=$(abspath $(VENV))/bin:$$PATH \
	cmake -S $(IFACES) -B build/prevla_interfaces -DBUILD_TESTING=OFF \
	  -DCMAKE_PREFIX_PATH=$(abspath $(VENV)) -DCMAKE_INSTALL_PREFIX=$(abspath $(VENV)) \
	  -DPython3_EXECUTABLE=$(abspath $(PY)) > build/cmake-configure.log 2>&1 \
	  || { tail -40 build/cmake-configure.log; exit 1; }
	cmake --build build/prevla_interfaces -j2 --target install > build/cmake-build.log 2>&1 \
	  || { tail -40 build/cmake-build.log; exit 1; }
	touch $@

$(VENV)/.package: pyproject.toml $(VENV)/.deps
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $@

install: $(VENV)/.deps $(VENV)/.interfaces $(VENV)/.package

demo: install
	$(VENV)/bin/prevla demo --world-model

up: install
	$(VENV)/bin/prevla up

test: install
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not libero"

VERIFIER_DATA ?= outputs/candidates/libero_spatial
VERIFIER_STEPS ?= 3000
verifier-data: install
	$(VENV)/bin/prevla label-candidates --suite libero_spatial --episodes-per-task 12 --workers 2 --out $(VERIFIER_DATA)

# full model and ablations, two at a time on one thread each
train-verifier: install
	$(VENV)/bin/prevla train-verifier --data $(VERIFIER_DATA) --steps $(VERIFIER_STEPS) --num-threads 1 --variant full --out outputs/verifier/full & \
	$(VENV)/bin/prevla train-verifier --data $(VERIFIER_DATA) --steps $(VERIFIER_STEPS) --num-threads 1 --variant bce --out outputs/verifier/bce; wait
	$(VENV)/bin/prevla train-verifier --data $(VERIFIER_DATA) --steps $(VERIFIER_STEPS) --num-threads 1 --variant no_calib --out outputs/verifier/no_calib & \
	$(VENV)/bin/prevla train-verifier --data $(VERIFIER_DATA) --steps $(VERIFIER_STEPS) --num-threads 1 --variant mean_pool --out outputs/verifier/mean_pool; wait
	$(VENV)/bin/prevla train-verifier --table outputs/verifier/{full,bce,no_calib,mean_pool}/metrics.json

# Issue 15: outcome-grounded labels (init states >= 10) and the selection ceiling they measure
BRANCH_DATA ?= outputs/branches/libero_spatial
BRANCH_EPISODES ?= 2
ceiling: install
	$(VENV)/bin/prevla branch --suite libero_spatial --episodes-per-task $(BRANCH_EPISODES) --num-candidates 8 \
		--continuations 4 --branch-every 4 --workers 2 --out $(BRANCH_DATA)
	$(VENV)/bin/prevla ceiling --data $(BRANCH_DATA) --out docs/results/ceiling_spatial.json

# Issue 15, the cheap label at scale: a critic of the zoo VLA on all 10 tasks (policy evaluation,
# init states 10-29, 55 min on 2 cores), its bootstrapped Q of 8 candidates at every 2nd decision
# of 100 rollouts (init states 30-39, ~35 min), the verifier distilled from those labels (~4 min)
VALUE_MODEL ?= zoo:vla_libero_spatial_critic
critic: install
	RAY_AUTH_MODE=$${RAY_AUTH_MODE:-disabled} $(VENV)/bin/prevla rl --critic-only --out-dir outputs/rl/critic --tasks 0-9 --init-start 10 --init-count 20 \
		--runners 2 --runner-cpus 0.5 --envs-per-runner 5 --steps 1000 --minutes 55 --batch-size 256
value-labels: install
	$(VENV)/bin/prevla branch --suite libero_spatial --tasks 0-9 --episodes-per-task 10 --first-init-state 30 \
		--num-candidates 8 --continuations 0 --value-model $(VALUE_MODEL) --branch-every 2 --workers 2 \
		--out outputs/branches/value_all
train-verifier-value: install
	$(VENV)/bin/prevla train-verifier --data outputs/branches/value_all --labels value --init-from zoo:default \
		--steps 2000 --eval-interval 500 --num-threads 2 --batch-size 16 --out outputs/verifier/value

# the closed-loop table: every selection arm over the same K = 8 candidates and seeds, init states
# 0-9 twice (20 episodes per task and arm); finished (task, arm) jobs resume from outputs/eval/
# (the earlier table: CLOSED_LOOP_VERIFIER=zoo:verifier_libero_spatial_mc CLOSED_LOOP=spatial_final;
# CLOSED_LOOP_ARGS="--reuse docs/results/spatial_final.json" takes the arms it shares from that report)
CLOSED_LOOP_VERIFIER ?= zoo:verifier_libero_spatial_value
CLOSED_LOOP ?= spatial_value
CLOSED_LOOP_ARGS ?=
closed-loop: install
	$(VENV)/bin/prevla eval --suite libero_spatial --policy vla --num-candidates 8 --episodes-per-task 20 \
		--init-count 10 --arms policy,random,consensus,verifier,verifier_advantage \
		--verifier $(CLOSED_LOOP_VERIFIER) --workers 2 \
		--out outputs/eval/$(CLOSED_LOOP).json $(CLOSED_LOOP_ARGS)
	cp outputs/eval/$(CLOSED_LOOP).json outputs/eval/$(CLOSED_LOOP).md outputs/eval/$(CLOSED_LOOP).png docs/results/

# ONNX exports of the zoo defaults (parity-checked against torch on the recorded inputs, registered in
# the manifest); on a GPU machine add: $(VENV)/bin/prevla export --kind verifier --to tensorrt
export: install
	$(VENV)/bin/prevla export --kind verifier --to onnx
	$(VENV)/bin/prevla export --kind vla --to onnx

bench: bench-verifier bench-engines bench-scheduler

train-world-model: install
	$(VENV)/bin/prevla train-world-model --out outputs/world_model

bench-world-model: install
	$(PY) -m prevla_training.bench_world_model --out outputs/bench/world_model.json

bench-engines: install
	$(PY) -m prevla_training.bench_engines --out outputs/bench/engines.json

bench-scheduler: install
	$(PY) -m prevla_training.bench_scheduler --out outputs/bench/scheduler.json

# Soak (issue 17): the graph under `prevla up --processes`, episodes back to back, for SOAK_MIN
# minutes (60 for the record); RSS per node, decision latency p50/p99 per window, message loss.
# SOAK_ARGS go to the graph (prevla up options).
SOAK_MIN ?= 60
SOAK_WARMUP_MIN ?= 5
SOAK_ARGS ?= --policy vla --verifier model
SOAK_OUT ?= outputs/bench/soak.json
soak: install
	$(PY) -m prevla_training.bench_soak --minutes $(SOAK_MIN) --warmup-minutes $(SOAK_WARMUP_MIN) \
		--out $(SOAK_OUT) $(SOAK_ARGS)

# D-VLA (issue 16). `make rl` trains on init states >= 10 only; RL_ARGS are prevla rl options
# (e.g. --address auto for a running cluster, --runners 8 on a bigger machine, --resume).
RL_ARGS ?= --tasks 5,7,9 --runners 2 --runner-cpus 0.5 --envs-per-runner 2 --steps 1000 --minutes 60
rl: install
	RAY_AUTH_MODE=$${RAY_AUTH_MODE:-disabled} $(VENV)/bin/prevla rl --out-dir outputs/rl/spatial $(RL_ARGS)

BENCH_RL_ARGS ?= --updates 4 --runner-counts 1,2 --tasks 5,7,9 --runner-cpus 0.5
bench-rl: install
	RAY_AUTH_MODE=$${RAY_AUTH_MODE:-disabled} $(PY) -m prevla_training.bench_rl --out outputs/bench/rl.json $(BENCH_RL_ARGS)
	RAY_AUTH_MODE=$${RAY_AUTH_MODE:-disabled} $(PY) -m prevla_training.bench_replication --out outputs/bench/replication.json
	$(PY) -m prevla_training.bench_memory --out outputs/bench/memory.json

bench-verifier: install
	$(PY) -m prevla_training.bench_verifier --out outputs/bench/verifier_latency.json

expert-eval: install
	$(PY) -m prevla_training.expert_eval --suite libero_spatial --episodes-per-task 10 --workers 2 --out outputs/expert_libero_spatial.json
	$(PY) -m prevla_training.expert_eval --suite libero_object --episodes-per-task 10 --workers 2 --out outputs/expert_libero_object.json

clean:
	rm -rf build outputs
