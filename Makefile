# The README's two commands: `make run` and `make test`. Each creates .venv itself.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck pytest micro asan sysdeps clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The editable install compiles the optional C speedups in place (setup.py); a change to
# the C source reinstalls.
$(STAMP): $(BIN)/python pyproject.toml setup.py wsflask/protocol/_speedups.c
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python examples/chat.py

lint: $(STAMP)
	$(BIN)/ruff check wsflask tests loadtests examples

typecheck: $(STAMP)
	$(BIN)/mypy --strict wsflask

# Debian's redis-server and chromium, node and the pinned npm packages: installed when missing.
sysdeps:
	bash .ci/ensure-system-deps.sh

pytest: $(STAMP) sysdeps
	$(BIN)/python -m pytest

test: lint typecheck pytest

# Pinned to CPU 1 when taskset exists; PYTHONPATH makes it measure this checkout's code.
# `WSFLASK_NO_EXTENSIONS=1 make micro` measures the pure-Python path.
TASKSET := $(shell command -v taskset >/dev/null 2>&1 && echo taskset -c 1)
micro: $(STAMP)
	PYTHONPATH=$(CURDIR) $(TASKSET) $(BIN)/python loadtests/micro.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
