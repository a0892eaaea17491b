# Quick start: `make demo` and `make test` on a machine with python3 and make.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# The CPU wheel of torch 2.13.0 lies on this machine's disk; an unpinned torch downloads GBs.
TORCH_PIN ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup test demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@echo "setting up $(VENV): torch, then modelglue with its dev, lmeval and ray extras (1-3 minutes)"
	$(PY) -m pip install --progress-bar off "$(TORCH_PIN)"
	@# pip's last phase ("Installing collected packages") prints nothing for a minute or more: a line every 20 s
	$(PY) -m pip install --progress-bar off -e ".[dev,lmeval,ray]" "$(TORCH_PIN)" & pid=$$!; \
	i=0; while kill -0 $$pid 2>/dev/null; do sleep 1; i=$$((i + 1)); \
	  if [ $$((i % 20)) -eq 0 ]; then echo "  (pip still working: $$i s)"; fi; done; \
	wait $$pid
	touch $(STAMP)

# pytest exits 5 when it collects no test: that fails the target like any other failure.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/modelglue demo

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
