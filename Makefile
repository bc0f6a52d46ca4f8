# Two commands on a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test install fashion-mnist bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -c constraints.txt -e '.[test]'
	touch $(STAMP)

# Debian ships the real Fashion-MNIST as IDX files; fetch it when missing and apt is usable.
fashion-mnist:
	@if [ ! -d $(FMNIST) ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || echo "warning: could not install dataset-fashion-mnist; Fashion-MNIST tests will be skipped"; \
	  else echo "note: $(FMNIST) missing and apt-get unavailable (need root): Fashion-MNIST tests will be skipped"; fi; \
	fi

test: $(STAMP) fashion-mnist
	$(BIN)/python -m pytest

demo: $(STAMP) fashion-mnist
	$(BIN)/db3 demo --out .demo

bench: $(STAMP) fashion-mnist
	$(BIN)/python benchmarks/oracle_throughput.py

clean:
	rm -rf $(VENV) .demo .pytest_cache build *.egg-info
