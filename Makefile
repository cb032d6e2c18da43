# Two entry points that set themselves up on a fresh clone: `make demo` and `make test`.
# Everything is installed into .venv inside the checkout.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: demo test lint bench clean browser

# Core: a CPU build of torch first (it satisfies torch>=2.1, so no multi-GB CUDA download), then the package.
$(VENV)/.core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) "torch==2.13.0" || $(PIP) torch
	$(PIP) -e .
	touch $@

# Tests need every extra the test suite exercises (open_clip for `embed`, matplotlib for `report`, Ray).
$(VENV)/.test: $(VENV)/.core pyproject.toml
	$(PIP) -e ".[test,embed,report,ray,inspect]"
	touch $@

demo: $(VENV)/.core
	$(PY) -m datacomp_plugins demo demo_out

# The inspect page is tested in headless Chromium: install Debian's package where we may (root or sudo -n).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && apt-get install -y -q chromium >/dev/null; } || \
	  sudo -n apt-get install -y -q chromium >/dev/null 2>&1 || \
	  echo "no Chromium could be installed: the browser test will be skipped"

test: $(VENV)/.test browser
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: $(VENV)/.test
	$(VENV)/bin/ruff check .

bench: $(VENV)/.core
	$(PY) tools/bench_negcliploss.py

clean:
	rm -rf $(VENV) demo_out
