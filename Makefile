# Two entry points that set themselves up on a fresh clone: `make demo` and `make test`.
# Everything Python is installed into .venv inside the checkout.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# --no-cache-dir: open_clip's torchvision brings a CUDA torch of several GB; a cached copy of its wheels would
# double what the install needs on disk (a CI machine once ran out of it)
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check --no-cache-dir
# DataComp's source, for the tests and commands that run DataComp's own scripts (resharder, baselines.py,
# eval_utils). Point it at your checkout; next to this one it is found without help.
DATACOMP_DIR ?= $(wildcard $(abspath ..)/shared/datacomp)
export DATACOMP_DIR
# albumentations (under DataComp's resharder) asks the network for updates on import: not here
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: demo test test-fast lint bench minicomp clean

# Core: a CPU build of torch first (it satisfies torch>=2.1, so no multi-GB CUDA download), then the package.
$(VENV)/.core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) "torch==2.13.0" || $(PIP) torch
	$(PIP) -e .
	touch $@

# System programs the tests drive: Chromium (the inspect page's browser test) and protoc (to build gcld3,
# which DataComp's baselines.py imports). Installed with apt where we are root; otherwise those tests say why
# they skip.
$(VENV)/.system: | $(VENV)/.core
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v protoc >/dev/null 2>&1 || missing="$$missing protobuf-compiler libprotobuf-dev"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing system packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "note: not root or no apt-get; missing:$$missing (browser / DataComp baselines tests will skip)"; fi; \
	fi
	touch $@

# Tests need every extra the test suite exercises: open_clip (embed, mini DataComp), matplotlib (report), Ray,
# and what DataComp's own scripts import. open_clip's torchvision brings its own torch build.
$(VENV)/.test: $(VENV)/.core $(VENV)/.system pyproject.toml
	$(PIP) -e ".[test,embed,report,ray,minicomp,inspect]"
	$(PIP) -e ".[datacomp]" || echo "note: DataComp's baselines.py dependencies did not install; those tests will skip"
	touch $@

demo: $(VENV)/.core
	$(PY) -m datacomp_plugins demo demo_out

test: $(VENV)/.test
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

# The contributor's loop: every test not marked slow (under 2 minutes on two cores). CI runs `make test`.
test-fast: $(VENV)/.test
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -m "not slow"

lint: $(VENV)/.test
	$(VENV)/bin/ruff check .

# The mini DataComp end to end: the default world, 6 baselines and 2 controls x 5 seeds, minicomp-out/report.md (docs/MINICOMP.md)
minicomp: $(VENV)/.test
	@test -n "$(DATACOMP_DIR)" || { echo "set DATACOMP_DIR to a DataComp checkout"; exit 2; }
	$(PY) -m datacomp_plugins minicomp build minicomp-out
	$(PY) -m datacomp_plugins minicomp run minicomp-out

bench: $(VENV)/.core
	$(PY) tools/bench_negcliploss.py

clean:
	rm -rf $(VENV) demo_out minicomp-out
