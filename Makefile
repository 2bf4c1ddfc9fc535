PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	# torchvision for the tests of --model torchvision:NAME; --no-deps: it may not pull another torch
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt torchvision
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m ltc.demo --out demo-out

test: $(STAMP)
	$(BIN)/ruff check ltc tests experiments
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

bench: $(STAMP)
	$(BIN)/python experiments/compress_speed/run.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache
