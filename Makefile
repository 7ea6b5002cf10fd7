PY := .venv/bin/python
UME := .venv/bin/ume

.PHONY: install demo test test-all lint format bench bundle bundle-small clean

install:
	bash scripts/setup.sh

demo: install
	$(UME) demo --preset quick --workdir work

test: install
	$(PY) -m pytest -q

test-all: install
	$(PY) -m pytest -q -m ""

lint: install
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

format:
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

bench: install
	$(UME) bench rtf --model ume/models/dense_paper --data work/data/test

# Retrain and replace the bundled dense model (after an incompatible model change).
bundle: install
	bash scripts/train_bundled.sh

# Retrain and replace ume/models/dense_small (issue 13's saturated `small` dense, 14,000 steps).
bundle-small: install
	bash scripts/train_bundled_small.sh

clean:
	rm -rf work .pytest_cache .ruff_cache
