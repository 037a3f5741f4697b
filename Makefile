# GridWatch developer commands. `make help` lists them.
# uv is bootstrapped with pip on first use, so a fresh machine needs only python3 and make.

UV := python3 -m uv
RUN := $(UV) run --no-sync

.DEFAULT_GOAL := help
.PHONY: help uv sync up serve train evaluate test test-quick lint fmt tools clean prometheus

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

uv: ## install uv with pip if it is missing
	@python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv

sync: uv ## create .venv with every extra and the dev tools, exactly as uv.lock pins them
	@$(UV) sync --frozen --all-extras

up: sync ## start the local demo: API on :8000, UI on :8501 (trains a model on first start)
	$(RUN) gridwatch up

serve: sync ## run the API only
	$(RUN) gridwatch serve

train: sync ## (re)train the model into MODEL_DIR (default models/)
	$(RUN) gridwatch train

evaluate: sync ## precision/recall of the current model, with a contamination sweep
	$(RUN) gridwatch evaluate --sweep

test: sync ## lint, format check and the whole test suite (what CI runs)
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) pytest

test-quick: sync ## the quick loop: skip tests marked slow
	$(RUN) pytest -m "not slow"

lint: sync ## ruff lint and format check
	$(RUN) ruff check .
	$(RUN) ruff format --check .

fmt: sync ## format and auto-fix
	$(RUN) ruff format .
	$(RUN) ruff check --fix .

PROMETHEUS_PORT ?= 9090
prometheus: ## Prometheus with prometheus-rules/ on :9090, scraping the API of `make up` (needs Debian's prometheus)
	@command -v prometheus >/dev/null || { echo "prometheus is not installed: sudo apt-get install prometheus"; exit 1; }
	prometheus --config.file=docker/prometheus-local.yml --storage.tsdb.path=.prometheus \
		--web.listen-address=127.0.0.1:$(PROMETHEUS_PORT)

tools: ## download helm into .tools/bin (promtool and chromium come from apt, see .ci/run)
	.ci/install-helm.sh .tools/bin

clean: ## remove caches and test artifacts (not models/)
	rm -rf .pytest_cache .ruff_cache .hypothesis test-artifacts .prometheus
