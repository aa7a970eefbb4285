# embedjob: `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Models load from local dirs only; never reach for a hub.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_ENABLE_UV_RUN_RUNTIME_ENV := 0

.PHONY: setup test test-all lint demo docs bench clean

setup: $(VENV)/.installed

# torch first, pinned: on these CPU machines pip takes the 2.13.0 CPU wheel from
# local disk; an unpinned torch would pull a multi-GB CUDA build. The package
# itself accepts a range (pyproject.toml). constraints.txt pins the rest.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test]"
	$(BIN)/python -m pip check
	touch $@

# Default suite: everything but `slow` and `gpu`. pytest's exit code 5 (no
# tests collected) is a failure here, not a pass.
test: setup
	$(BIN)/python -m pytest -m "not slow and not gpu" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no tests ran" >&2; exit 1; fi; exit $$rc

test-all: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-all: no tests ran" >&2; exit 1; fi; exit $$rc

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

demo: setup
	$(BIN)/python -m examples.demo

# The docs site (docs/, mkdocs.yml) into site/; --strict: a broken link or a missing page fails the build.
# The test extra has mkdocs already; `pip install -e ".[docs]"` is all a docs-only checkout needs.
docs: setup
	$(BIN)/python -c "import mkdocs" 2>/dev/null || $(BIN)/python -m pip install -q -c constraints.txt -e ".[docs]"
	$(BIN)/mkdocs build --strict --site-dir site

# Every script in bench/, then one table of each figure against its target (about 1.5 h on 2 cores).
bench: setup
	$(BIN)/python -m bench.suite $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build site *.egg-info
