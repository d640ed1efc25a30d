# Two commands for users: `make serve` and `make test`. Each sets up what it needs.
PYTHON ?= python3
PORT ?= 3000
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install model serve test lint format

# The virtual environment, with the pinned requirements; redone when they change.
$(INSTALLED): requirements/serve.txt requirements/import.txt requirements/dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements/dev.txt
	touch $@

install: $(INSTALLED)

# Import the default model into the model store unless a version is there already.
model: $(INSTALLED)
	$(BIN)/python import_model.py --if-missing

serve: model
	$(BIN)/bentoml serve service:ImageClassifier --port $(PORT)

test: $(INSTALLED)
	$(BIN)/python -m pytest

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(INSTALLED)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
