# The two set-up commands in README.md are `make demo` and `make test`; .ci/run runs `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= demo-out

.PHONY: install demo test lint

# torch/torchvision are pinned by constraints.txt so no resolve can pull another torch.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -c constraints.txt -e '.[dev,test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/salt data synth $(DEMO_OUT)/data --videos 200 --classes 6 --seed 0
	$(BIN)/salt data info --data $(DEMO_OUT)/data

test: install
	$(BIN)/ruff check salt_vla tests benchmarks
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check salt_vla tests benchmarks
