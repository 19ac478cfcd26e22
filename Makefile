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

# The whole SALT recipe on CPU with synthetic data: stage-1 teacher (pixel reconstruction),
# cache its latents, verify the store, train the stage-2 student, probe all three encoders.
demo: install
	$(BIN)/salt data synth $(DEMO_OUT)/data --videos 200 --classes 6 --seed 0
	$(BIN)/salt data info --data $(DEMO_OUT)/data
	$(BIN)/salt teacher train --data $(DEMO_OUT)/data --exp teacher-tiny \
		--out $(DEMO_OUT)/teacher --set max_steps=80 --resume auto
	$(BIN)/salt cache build $(DEMO_OUT)/data --split train --view-preset tiny-8x64 \
		--teacher-ckpt $(DEMO_OUT)/teacher/teacher.pth --teacher-arch vit_tiny \
		--shard-size 32 --out $(DEMO_OUT)/cache
	$(BIN)/salt cache verify $(DEMO_OUT)/cache --recompute 4
	$(BIN)/salt train --exp tiny --cache $(DEMO_OUT)/cache --out $(DEMO_OUT)/student \
		--resume auto
	$(BIN)/salt eval probe --encoder random:tiny --data $(DEMO_OUT)/data \
		--view-preset tiny-8x64 --out $(DEMO_OUT)/probe-random.json
	$(BIN)/salt eval probe --encoder teacher:$(DEMO_OUT)/student --data $(DEMO_OUT)/data \
		--view-preset tiny-8x64 --out $(DEMO_OUT)/probe-teacher.json
	$(BIN)/salt eval probe --encoder $(DEMO_OUT)/student --data $(DEMO_OUT)/data \
		--view-preset tiny-8x64 --out $(DEMO_OUT)/probe-student.json
	$(BIN)/salt report $(DEMO_OUT)/student --out $(DEMO_OUT)/report.md

test: install
	$(BIN)/ruff check salt_vla tests benchmarks
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check salt_vla tests benchmarks
