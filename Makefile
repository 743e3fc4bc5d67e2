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
$(STAMP): $(BIN)/python pyproject.toml setup.py wsflask/protocol/_speedups.c wsflask/_iterator.c \
		wsflask/_framestacks.c
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python examples/chat.py

# The formatter is the style: a file `ruff format` would change fails the lint.
lint: $(STAMP)
	$(BIN)/ruff check wsflask tests loadtests examples
	$(BIN)/ruff format --check wsflask tests loadtests examples

# The tests are held to --strict too (tests/ has no __init__.py, so mypy puts it on the path
# and `from helpers import ...` resolves); tests/test_typing.py also checks tests/type_check/
# against the built wheel.
typecheck: $(STAMP)
	$(BIN)/mypy --strict wsflask tests

# Debian's redis-server and chromium, node and the pinned npm packages: installed when missing.
sysdeps:
	bash .ci/ensure-system-deps.sh

# The suite runs under coverage (settings in pyproject.toml); the run fails when
# wsflask/protocol/ is under 95 % branch coverage or a handshake module misses a line.
COVER_PROTOCOL := 95
COVER_ALL_LINES := wsflask/protocol/handshake.py wsflask/upgrade.py
pytest: $(STAMP) sysdeps
	$(BIN)/python -m pytest --cov --cov-report=
	$(BIN)/python -m coverage report --include='wsflask/protocol/*' --fail-under=$(COVER_PROTOCOL)
	$(BIN)/python -c "import coverage, sys; c = coverage.Coverage(); c.load(); \
		missed = {f: c.analysis2(f)[4] for f in sys.argv[1:] if c.analysis2(f)[3]}; \
		sys.exit(f'lines never run: {missed}' if missed else 0)" $(COVER_ALL_LINES)

test: lint typecheck pytest

# Pinned to CPU 1 when taskset exists; PYTHONPATH makes it measure this checkout's code.
# `WSFLASK_NO_EXTENSIONS=1 make micro` measures the pure-Python path.
TASKSET := $(shell command -v taskset >/dev/null 2>&1 && echo taskset -c 1)
micro: $(STAMP)
	PYTHONPATH=$(CURDIR) $(TASKSET) $(BIN)/python loadtests/micro.py

# The C extensions under AddressSanitizer + UBSan: all built into build/asan with a copy of
# the package and tests/protocol, run with libasan preloaded (CPython is not instrumented) and
# PYTHONMALLOC=malloc, so every Python buffer is a malloc block ASan can guard. Leak checking
# is off: CPython keeps memory at exit; test_speedups checks for leaks itself. The message
# iterator (wsflask/_iterator.c) is built and loaded instrumented, but its tests need live
# greenlets, and a preloaded libasan cannot intercept greenlet's C++ exceptions (a kill
# aborts in ASan's __cxa_throw interceptor): they run in the main pass, on both twins. The
# frame-stack cache (wsflask/_framestacks.c) runs its tests that start and end greenlets and
# threads in fresh interpreters (no kill), instrumented; the server ones run in the main pass.
ASAN_DIR := build/asan
# CPU-time ratios are not measured under the sanitizers (their allocator is not linear-time);
# the main test pass asserts them. Everything else in tests/protocol runs instrumented.
ASAN_DESELECT := not heap_and_cpu and not parse_linearly and not sixty_thousand_spaces and not is_linear
SANITIZE := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
asan: $(STAMP)
	rm -rf $(ASAN_DIR) && mkdir -p $(ASAN_DIR)/tests
	cp -r wsflask $(ASAN_DIR)/ && cp -r tests/conftest.py tests/helpers.py tests/protocol \
		tests/test_framestacks.py $(ASAN_DIR)/tests/
	rm -f $(ASAN_DIR)/wsflask/protocol/_speedups*.so $(ASAN_DIR)/wsflask/_iterator*.so \
		$(ASAN_DIR)/wsflask/_framestacks*.so
	CFLAGS="$(SANITIZE) -O1 -g" LDFLAGS="$(SANITIZE)" $(BIN)/python setup.py -q build_ext \
		--build-lib $(ASAN_DIR) --build-temp $(ASAN_DIR)/tmp
	cd $(ASAN_DIR) && LD_PRELOAD="$$(gcc -print-file-name=libasan.so)" PYTHONMALLOC=malloc \
		ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
		$(CURDIR)/$(BIN)/python -c "import wsflask.protocol._speedups as m, wsflask._iterator as i, \
		wsflask._framestacks as f, sys; \
		bad = [x.__file__ for x in (m, i, f) if '/$(ASAN_DIR)/' not in x.__file__]; \
		sys.exit('not the ASan build: ' + ' '.join(bad) if bad else 0)"
	cd $(ASAN_DIR) && LD_PRELOAD="$$(gcc -print-file-name=libasan.so)" PYTHONMALLOC=malloc \
		ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 CI=true \
		$(CURDIR)/$(BIN)/python -m pytest -q -p no:cacheprovider tests/protocol -k "$(ASAN_DESELECT)"
	cd $(ASAN_DIR) && LD_PRELOAD="$$(gcc -print-file-name=libasan.so)" PYTHONMALLOC=malloc \
		ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 CI=true \
		$(CURDIR)/$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_framestacks.py \
		-k "not server and not app"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
