# Every target sets up what it needs: a virtualenv in .venv, the package, and
# redis-server and prometheus (installed from Debian when missing and we are root).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.DEFAULT_GOAL := help
.PHONY: help venv binaries demo test lint bench bench-quick clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all]'
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP) ## create .venv and install streamrec with its dev tools

binaries: ## redis-server, prometheus, the Pushgateway and redis_exporter from Debian when missing (apt-get, as root)
	@scripts/ensure-binaries.sh

demo: venv binaries ## replay a synthetic sample through Kafka -> Faust -> Redis and watch state change
	$(BIN)/streamrec demo

# On every core, a module per worker (module fixtures stay shared); then the
# timing-sensitive tests (marked `alone`) with nothing running beside them. Both
# runs report before the target fails.
test: venv binaries ## unit, integration (real broker, real Redis) and end-to-end tests
	status=0; \
	$(BIN)/python -m pytest -n logical --dist loadscope --no-loadscope-reorder -m "not alone" || status=$$?; \
	$(BIN)/python -m pytest -m alone || status=$$?; \
	exit $$status

lint: venv ## ruff check, ruff format --check, the import layers, mypy (strict) on every package and the tests
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy streamrec devtools stream model_server retrain bench cli tests

bench: venv binaries ## ingestion benchmark on the Taobao stream (writes bench/reports/)
	$(BIN)/streamrec bench ingest

bench-quick: venv binaries ## the same, in under a minute
	$(BIN)/streamrec bench ingest --quick

clean: ## stop the dev stack and remove the virtualenv
	-$(BIN)/streamrec dev down
	rm -rf $(VENV)
