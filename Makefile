# byok-worker: every entry point of the project. `make demo` and `make test` do all set-up themselves.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The browser tests (tests/browser) drive Debian's Chromium through Playwright; no browser is ever downloaded.
CHROMIUM := /usr/bin/chromium

.PHONY: setup test lint demo bench schemas check-deploy clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium

test: $(STAMP) $(CHROMIUM)
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check worker schemas tests deploy
	$(BIN)/mypy

schemas: $(STAMP)
	$(BIN)/python -m schemas.generate
	$(BIN)/python -m worker.broker.asyncapi

demo: $(STAMP)
	$(BIN)/python -m worker.testing.demo

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	LITELLM_LOCAL_MODEL_COST_MAP=True $(BIN)/python -m tests.bench.run

check-deploy: $(STAMP)
	$(BIN)/python deploy/rabbitmq/render_definitions.py --check deploy/rabbitmq/definitions.json
	$(BIN)/hadolint deploy/Dockerfile
	$(BIN)/shellcheck --shell=sh deploy/vault/setup.sh
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec deploy/compose.yaml
	$(BIN)/kubectl kustomize deploy/k8s/overlays/production > /dev/null
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/deploy

clean:
	rm -rf $(VENV) .demo .mypy_cache .ruff_cache .pytest_cache
