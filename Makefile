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

.PHONY: install demo up test test-fast expert-eval clean help
help:
	@echo "make demo    install (if needed) and run a LIBERO-Spatial episode through the ROS 2 nodes"
	@echo "make test    install (if needed) and run the test suite"
	@echo "make expert-eval   measure the scripted expert on LIBERO-Spatial and -Object"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.deps: requirements/lock.txt | $(PY)
	$(PIP) install -q --upgrade pip==26.3
	$(PIP) install -q -r requirements/lock.txt
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
	$(VENV)/bin/prevla demo

up: install
	$(VENV)/bin/prevla up

test: install
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not libero"

expert-eval: install
	$(PY) -m prevla_ros.sim.expert_eval --suite libero_spatial --episodes-per-task 10 --workers 2 --out outputs/expert_libero_spatial.json
	$(PY) -m prevla_ros.sim.expert_eval --suite libero_object --episodes-per-task 10 --workers 2 --out outputs/expert_libero_object.json

clean:
	rm -rf build outputs
