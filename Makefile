# The README's two commands: `make run` and `make test`. Each creates .venv itself.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck pytest micro sysdeps clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python examples/chat.py

# The formatter is the style: a file `ruff format` would change fails the lint.
lint: $(STAMP)
	$(BIN)/ruff check wsflask tests loadtests examples
	$(BIN)/ruff format --check wsflask tests loadtests examples

# tests/ joins once `mypy --strict tests` is clean; tests/test_typing.py already checks
# tests/type_check/ against the built wheel.
typecheck: $(STAMP)
	$(BIN)/mypy --strict wsflask

# Debian's redis-server and chromium, node and the pinned npm packages: installed when missing.
sysdeps:
	bash .ci/ensure-system-deps.sh

pytest: $(STAMP) sysdeps
	$(BIN)/python -m pytest

test: lint typecheck pytest

micro: $(STAMP)
	$(BIN)/python loadtests/micro.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
