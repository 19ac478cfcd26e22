# The two set-up commands in README.md are `make demo` and `make test`; .ci/run runs `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= demo-out

.PHONY: install demo test lint

# torch/torchvision are pinned by constraints.txt so no resolve can pull another torch.
# `train` is the training stack (the `salt` command); the bare package is the slim install.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -c constraints.txt -e '.[train,dev,test]'
	touch $@

install: $(VENV)/.installed

# The whole SALT recipe on CPU with synthetic data, as library calls in one process
# (salt_vla/demo.py): synthetic videos, stage-1 teacher (pixel reconstruction), cache build +
# verify, stage-2 student, probe of all three encoders; table + PNG in $(DEMO_OUT).
demo: install
	$(BIN)/salt demo --out $(DEMO_OUT)

test: install
	$(BIN)/ruff check salt_vla tests benchmarks
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check salt_vla tests benchmarks
