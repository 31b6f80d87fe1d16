# Two entry points: `make demo` and `make test`. Each creates .venv on first use and installs edgezoo with
# its extras (dev, export, mobile: LiteRT, ExecuTorch, Core ML toolchains, ~1.2 GB); torch/torchvision are pinned
# to the builds that ship on this machine's local package index.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.edgezoo-installed
PYTEST_ARGS ?= -n 2

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[dev,export,precision,mobile]"
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1  # the mobile toolchains must not move torch
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m edgezoo demo
	@echo "edgezoo is installed in $(VENV)/: run 'source $(VENV)/bin/activate' to use the edgezoo command, or call $(VENV)/bin/edgezoo"

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q $(PYTEST_ARGS) tests

clean:
	rm -rf $(VENV) build src/*.egg-info
