# Two commands for users: `make serve` and `make test`. Each sets up what it needs.
PYTHON ?= python3
PORT ?= 3000
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# `make image`: BACKEND is `bentoml containerize --backend` (docker, podman, buildah, ...), IMAGE the
# image's name:tag; BASE_IMAGE replaces bentofile.yaml's base image; CONTAINERIZE_OPTS are passed on.
BACKEND ?= docker
IMAGE ?= image-classifier:latest
BASE_IMAGE ?=
CONTAINERIZE_OPTS ?=

.PHONY: install model serve image image-engine test test-fast lint format bench bench-smoke

# The virtual environment, with the pinned requirements and this project installed editable
# (imgserve/, see pyproject.toml); redone when they change.
$(INSTALLED): requirements/*.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements/dev.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

install: $(INSTALLED)

# Import the default model into the model store unless a version is there already.
model: $(INSTALLED)
	$(BIN)/python import_model.py --if-missing

serve: model
	$(BIN)/bentoml serve service:ImageClassifier --port $(PORT)

# The serving image: the Bento (with every served model: $$CLASSIFIER_MODELS, else $$CLASSIFIER_MODEL,
# else the default model) built into a container image. The image keeps the models' exact tags as
# its $$CLASSIFIER_MODELS, so it serves what it packed. Its last line is the image's reference.
BUILD_BENTOFILE := $(VENV)/bentofile.yaml
image: image-engine model
	cp bentofile.yaml $(BUILD_BENTOFILE)
ifdef BASE_IMAGE
	sed -i 's|^  base_image: .*|  base_image: "$(BASE_IMAGE)"|' $(BUILD_BENTOFILE)
endif
	$(BIN)/python -c 'from imgserve import config; from imgserve.serving import registry; \
	tags = ",".join(m.card.tag for m in registry.Registry.from_config()); \
	print(f"envs:\n  - name: {config.ENV_MODELS}\n    value: \"{tags}\"")' \
	>> $(BUILD_BENTOFILE)
	$(BIN)/bentoml build -f $(BUILD_BENTOFILE)
	@# From /: BentoML 1.4.39 re-reads the Dockerfile template (bentofile.yaml) from a temporary copy of
	@# the Bento and refuses a file outside its working directory; / holds every temporary directory.
	cd / && $(CURDIR)/$(BIN)/bentoml containerize image-classifier:latest --backend $(BACKEND) --image-tag $(IMAGE) $(CONTAINERIZE_OPTS)
	@echo $(IMAGE)

# Before anything is imported or built: the engine BACKEND names is there (buildx is Docker's), and Docker's
# daemon answers. Without this, `bentoml containerize` found out last, after the import and the build:
# a traceback for a program that is not installed, "Backend docker is not healthy" for a stopped daemon.
image-engine:
	@engine=$(BACKEND); [ "$$engine" != buildx ] || engine=docker; \
	if ! command -v "$$engine" >/dev/null; then \
		echo "make image: no $$engine here (BACKEND=$(BACKEND)): install it, or set BACKEND to an engine" \
			"you have (docker, podman, buildah, ...)" >&2; exit 1; \
	elif [ "$$engine" = docker ] && ! docker info >/dev/null 2>&1; then \
		echo "make image: docker is installed but no Docker engine answers (docker info): start it," \
			"or build with podman: BACKEND=podman make image" >&2; exit 1; \
	fi

test: $(INSTALLED)
	$(BIN)/python -m pytest

# The in-process tier (README "Development"): no server, no model import, no image, under a minute.
FAST := not serve and not model and not image and not soak and not bench and not browser
test-fast: $(INSTALLED)
	$(BIN)/python -m pytest -m "$(FAST)"

# The benchmark (README "Performance"): about 15 minutes on 2 cores; imports the models it needs,
# writes bench/results/bench.json and bench.png. bench-smoke: every step, tiny, numbers meaningless.
bench: model
	$(BIN)/python -m bench.run

bench-smoke: model
	$(BIN)/python -m bench.run --smoke

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(INSTALLED)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
