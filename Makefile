# diffpy-diffusion developer commands.  The two that matter:
#   make demo   create/update .venv, then propose structures for the bundled example pattern
#   make test   create/update .venv, lint (ruff + import-linter), then run the test suite (what CI runs: .ci/run)
#
# The virtual environment is (re)installed only when pyproject.toml, constraints.txt
# or a plugin's pyproject.toml changed since the last install (stamp file in .venv),
# so a second run starts in seconds.

PYTHON     ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.diffpy-diffusion-installed
# plugins installed editable next to the core (all folders with a pyproject.toml)
PLUGINS    := $(sort $(dir $(wildcard plugins/*/pyproject.toml)))
HASH_FILES := pyproject.toml constraints.txt $(sort $(wildcard plugins/*/pyproject.toml))
HASH       := $(shell cat $(HASH_FILES) 2>/dev/null | { sha256sum 2>/dev/null || shasum -a 256; } | cut -c1-16)
PIP_FLAGS  ?=
PYTEST_ARGS ?=
DEMO_DATA  := diffpy_diffusion/examples_data/nacl_3nm_cuka.xy
DEMO_OUT   ?= demo_output
# small enough for a few minutes on a 2-core CPU; raise for a better search
DEMO_N     ?= 16
DEMO_TOP   ?= 3

.PHONY: demo test test-fast acceptance lint venv clean-venv help docs

help:
	@echo "make demo       install (if needed) and run diffpy-diffuse propose on the bundled example"
	@echo "make test       install (if needed), lint, and run the tests (PYTEST_ARGS='-k io' to select)"
	@echo "make lint       ruff check + lint-imports (layering contracts in pyproject.toml)"
	@echo "make test-fast  same, skipping tests marked slow"
	@echo "make acceptance the long acceptance runs (tests marked acceptance; minutes per case)"
	@echo "make venv       only create/update $(VENV)"
	@echo "make docs       build the HTML docs (Sphinx, warnings are errors) into docs/_build/html"

venv:
	@set -e; \
	if [ -f "$(STAMP)" ] && [ "$$(cat $(STAMP))" = "$(HASH)" ] && [ -x "$(PY)" ]; then \
	  echo "[make] $(VENV) is up to date ($(HASH))"; \
	else \
	  if [ ! -x "$(PY)" ]; then echo "[make] creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); fi; \
	  echo "[make] installing diffpy-diffusion + plugins into $(VENV) (constraints.txt)"; \
	  $(PY) -m pip install $(PIP_FLAGS) -q -c constraints.txt -e ".[dev]"; \
	  for p in $(PLUGINS); do \
	    echo "[make]   plugin $$p"; $(PY) -m pip install $(PIP_FLAGS) -q --no-deps -e "$$p"; \
	  done; \
	  echo "$(HASH)" > $(STAMP); \
	fi

demo: venv
	@test -f $(DEMO_DATA) || { echo "[make] missing $(DEMO_DATA)"; exit 1; }
	$(VENV)/bin/diffpy-diffuse propose $(DEMO_DATA) --composition NaCl --wavelength CuKa --size 3nm \
	  --n $(DEMO_N) --top $(DEMO_TOP) --seed 0 -o $(DEMO_OUT) --force

# Style (ruff) and the import layering (import-linter contracts in pyproject.toml).
# Both run over everything before stopping, so one `make lint` shows all findings.
lint: venv
	@set +e; $(VENV)/bin/ruff check .; r1=$$?; $(VENV)/bin/lint-imports; r2=$$?; \
	test $$r1 -eq 0 -a $$r2 -eq 0

# pytest exit status 5 = "no tests collected": an error for the full suite (collection
# broke), but fine when PYTEST_ARGS/PYTEST_ADDOPTS selected nothing on purpose.
test: venv lint
	@set +e; $(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then \
	  if [ -n "$(PYTEST_ARGS)$$PYTEST_ADDOPTS" ]; then echo "[make] no tests matched the selection"; rc=0; \
	  else echo "[make] pytest collected no tests: the suite failed to load"; rc=1; fi; \
	fi; exit $$rc

test-fast: PYTEST_ARGS += -m "not slow"
test-fast: test

# The issues' long acceptance runs (minutes per case on 2 cores), left out of `make test`.
acceptance: PYTEST_ARGS += -m acceptance
acceptance: test

# Sphinx docs with warnings as errors (-W); the CLI reference is generated from click.
docs: venv
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html
	@echo "[make] docs in docs/_build/html/index.html"

clean-venv:
	rm -rf $(VENV)
