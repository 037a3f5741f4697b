# GridWatch developer commands. `make help` lists them.
# uv is bootstrapped with pip on first use, so a fresh machine needs only python3 and make.

UV := python3 -m uv
RUN := $(UV) run --no-sync

.DEFAULT_GOAL := help
.PHONY: help uv sync up serve train evaluate test test-quick lint fmt tools chart-lock clean prometheus images

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

uv: ## install uv with pip if it is missing
	@python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv

AOT_KERNELS := app/detector/.forest_aot.built

sync: uv ## create .venv with every extra and the dev tools, exactly as uv.lock pins them, and build the kernels
	@$(UV) sync --frozen --all-extras
	@$(MAKE) --no-print-directory $(AOT_KERNELS)

# The forest's kernels compiled ahead of time (app/detector/forest_aot.py): serving then needs neither numba nor LLVM.
$(AOT_KERNELS): app/detector/forest_kernels.py app/detector/forest_aot.py
	$(RUN) python -m app.detector.forest_aot
	@touch $@

up: sync ## start the local demo: API on :8000, UI on :8501 (trains a model on first start)
	$(RUN) gridwatch up

serve: sync ## run the API only
	$(RUN) gridwatch serve

train: sync ## (re)train the model into MODEL_DIR (default models/)
	$(RUN) gridwatch train

evaluate: sync ## precision/recall of the current model, with a contamination sweep
	$(RUN) gridwatch evaluate --sweep

test: lint ## lint, format check and the whole test suite (what CI runs)
	$(RUN) pytest

test-quick: sync ## the quick loop: skip tests marked slow
	$(RUN) pytest -m "not slow"

lint: sync ## ruff lint and format check, mypy type check
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy

fmt: sync ## format and auto-fix
	$(RUN) ruff format .
	$(RUN) ruff check --fix .

PROMETHEUS_PORT ?= 9090
prometheus: ## Prometheus with prometheus-rules/ on :9090, scraping the API of `make up` (needs Debian's prometheus)
	@command -v prometheus >/dev/null || { echo "prometheus is not installed: sudo apt-get install prometheus"; exit 1; }
	prometheus --config.file=docker/prometheus-local.yml --storage.tsdb.path=.prometheus \
		--web.listen-address=127.0.0.1:$(PROMETHEUS_PORT)

images: ## build gridwatch-backend:local and gridwatch-ui:local with podman (root; installs it on Debian), as CI does
	.ci/install-podman.sh
	.ci/base-images.sh
	.ci/build-images.sh

tools: ## install helm (Linux x86-64 only) and checkov into .tools/bin (promtool, amtool, chromium: apt, see .ci/run)
	.ci/install-helm.sh .tools/bin
	.ci/install-checkov.sh .tools/bin

chart-lock: sync ## rewrite helm/gridwatch/Chart.lock after a pin bump in Chart.yaml (offline, with the real helm)
	HELM=$(HELM) $(RUN) python .ci/chart_lock.py

clean: ## remove caches and test artifacts (not models/)
	rm -rf .pytest_cache .ruff_cache .hypothesis test-artifacts .prometheus app/detector/_forest_aot* $(AOT_KERNELS)

# --- Containers and the local kind cluster (needs Docker, kind, ctlptl, kubectl and helm; see docs/deploy.md) ----
CLUSTER ?= kind-gridwatch
REGISTRY ?= localhost:5005
NAMESPACE ?= gridwatch
RELEASE ?= gridwatch
CHART := helm/gridwatch
# The chart's object names: "<release>-gridwatch-backend", or "gridwatch-backend" when the release name holds "gridwatch".
FULLNAME := $(if $(findstring gridwatch,$(RELEASE)),$(RELEASE),$(RELEASE)-gridwatch)
# The project's images are tagged by the commit they are built from (plus a hash of the uncommitted changes, if any):
# a scale-out then never mixes code, and `helm rollback` brings the code back with the release. On kind the pods use
# IfNotPresent: a new build is a new tag, so there is never a stale image to pull again.
GIT_COMMIT := $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
GIT_CHANGES := $(shell git status --porcelain --untracked-files=no 2>/dev/null | head -1)
# A backend built with more extras (BACKEND_EXTRAS, below) is another image: its tag says so (-training), so nodes
# holding the plain one under the same commit do not keep it.
BACKEND_EXTRAS ?= backend
SPACE := $(subst ,, )
EXTRAS_SUFFIX := $(subst $(SPACE),-,$(strip $(filter-out backend,$(BACKEND_EXTRAS))))
IMAGE_TAG ?= $(GIT_COMMIT)$(if $(GIT_CHANGES),-dirty-$(shell git diff HEAD | sha256sum | cut -c1-8))$(if $(EXTRAS_SUFFIX),-$(EXTRAS_SUFFIX))
KIND_IMAGE_VALUES := --set backend.image.tag=$(IMAGE_TAG) --set ui.image.tag=$(IMAGE_TAG) \
	--set backend.image.pullPolicy=IfNotPresent --set ui.image.pullPolicy=IfNotPresent
# More values for the render `make kind-images` reads, e.g. CHART_VALUES="-f helm/gridwatch/values-stream.yaml".
CHART_VALUES ?=
# The kind release whose node image ctlptl.yaml pins (kindest/node:v1.36.1): older kind is refused (before v0.28 its
# NetworkPolicy engine was reported to block kubelet probes), newer runs it best-effort, as kind promises.
KIND_MIN_VERSION := 0.32.0
KIND_NAME := $(patsubst kind-%,%,$(CLUSTER))
# Where `make kind-images-save` writes the upstream images and `make kind-images IMAGES_ARCHIVE=...` reads them.
IMAGES_ARCHIVE ?=
HELM ?= $(shell command -v helm 2>/dev/null || echo .tools/bin/helm)
KUBECTL := kubectl --context $(CLUSTER) -n $(NAMESPACE)
HELM_KIND := $(HELM) --kube-context $(CLUSTER) -n $(NAMESPACE)
# BACKEND_EXTRAS, the backend image's extras (docker/Dockerfile.backend): add training for Parquet files in the
# training Job, e.g. `make kind-redeploy BACKEND_EXTRAS="backend training"` (set above, where it names the tag).
BUILD_ARGS := --build-arg VERSION=$(IMAGE_TAG) --build-arg REVISION=$(shell git rev-parse HEAD 2>/dev/null || echo unknown) \
	--build-arg CREATED=$(shell date -u +%Y-%m-%dT%H:%M:%SZ)
LOAD_SECONDS ?= 60
# 300 batches of 64 a second: several times what one backend pod at its 1-CPU limit scores, so the HPA scales out.
LOAD_RPS ?= 300
# The stream on the cluster (values-stream.yaml): readings per second the laptop publishes over MQTT, and the pending
# messages per consumer KEDA aims at, low enough that what a port-forward carries builds a backlog worth scaling for.
PUBLISH_RATE ?= 3000
STREAM_LAG_THRESHOLD ?= 500
STREAM_VALUES := -f $(CHART)/values-stream.yaml $(KIND_IMAGE_VALUES) \
	--set stream.autoscaling.lagThreshold=$(STREAM_LAG_THRESHOLD)
# The bundled NATS chart's name for its objects: "<release>-nats", or the release alone when it holds "nats".
NATS_FULLNAME := $(if $(findstring nats,$(RELEASE)),$(RELEASE),$(RELEASE)-nats)

.PHONY: compose-up compose-down kind kind-up kind-build kind-push helm-deps kind-deploy kind-test kind-forward \
	kind-load kind-redeploy kind-down kind-stream kind-publish kind-check kind-images kind-images-save image-tag

compose-up: ## API, UI, Prometheus and Grafana with Docker Compose (no Kubernetes)
	docker compose -f docker/compose.yaml up --build

compose-down: ## stop the compose stack and drop its volumes
	docker compose -f docker/compose.yaml down --volumes

kind: kind-up kind-build kind-push helm-deps kind-deploy ## the whole path: cluster, images, chart, release

image-tag: ## print the tag kind-build gives both images (the commit, plus a hash of uncommitted changes)
	@echo $(IMAGE_TAG)

kind-check: ## refuse a kind older than the release of the node image ctlptl.yaml pins
	@version=$$(kind version -q 2>/dev/null) || { echo "kind is not installed: https://kind.sigs.k8s.io/docs/user/quick-start/"; exit 1; }; \
	python3 -c 'import re, sys; have = tuple(map(int, re.findall(r"\d+", sys.argv[1])[:3])); need = tuple(map(int, sys.argv[2].split("."))); sys.exit(0 if have >= need else f"kind {sys.argv[1]} is older than v{sys.argv[2]}, the release of the node image ctlptl.yaml pins: upgrade kind (https://kind.sigs.k8s.io/docs/user/quick-start/)")' "$$version" $(KIND_MIN_VERSION)

kind-up: kind-check ## create the kind cluster and its registry (ctlptl.yaml)
	ctlptl apply -f ctlptl.yaml

kind-images: sync helm-deps ## pull every upstream image the rendered chart runs (read from the render) and load it into kind
	$(HELM) template $(RELEASE) $(CHART) -n $(NAMESPACE) $(KIND_IMAGE_VALUES) $(CHART_VALUES) \
		| $(RUN) python .ci/chart_inventory.py images --exclude $(REGISTRY)/ > .kind-images.txt
	@cat .kind-images.txt
ifeq ($(IMAGES_ARCHIVE),)
	xargs -n 1 docker pull < .kind-images.txt
	kind load docker-image --name $(KIND_NAME) $$(cat .kind-images.txt)
else
	kind load image-archive --name $(KIND_NAME) $(IMAGES_ARCHIVE)
endif

kind-images-save: sync helm-deps ## pull the same images once and save them to IMAGES_ARCHIVE, for a room of laptops
	@test -n "$(IMAGES_ARCHIVE)" || { echo "name the archive: make kind-images-save IMAGES_ARCHIVE=gridwatch-images.tar"; exit 1; }
	$(HELM) template $(RELEASE) $(CHART) -n $(NAMESPACE) $(KIND_IMAGE_VALUES) $(CHART_VALUES) \
		| $(RUN) python .ci/chart_inventory.py images --exclude $(REGISTRY)/ > .kind-images.txt
	xargs -n 1 docker pull < .kind-images.txt
	docker save -o $(IMAGES_ARCHIVE) $$(cat .kind-images.txt)

kind-build: ## build both images, tagged for the cluster's registry
	docker build -f docker/Dockerfile.backend $(BUILD_ARGS) --build-arg EXTRAS="$(BACKEND_EXTRAS)" \
		-t $(REGISTRY)/gridwatch-backend:$(IMAGE_TAG) .
	docker build -f docker/Dockerfile.ui $(BUILD_ARGS) -t $(REGISTRY)/gridwatch-ui:$(IMAGE_TAG) .

kind-push: ## push both images to the cluster's registry
	docker push $(REGISTRY)/gridwatch-backend:$(IMAGE_TAG)
	docker push $(REGISTRY)/gridwatch-ui:$(IMAGE_TAG)

helm-deps: ## fetch the pinned dependencies (Chart.lock) into helm/gridwatch/charts/
	$(HELM) dependency build $(CHART)

kind-deploy: ## install or upgrade the release and wait until it is ready
	$(HELM_KIND) upgrade --install $(RELEASE) $(CHART) --create-namespace $(KIND_IMAGE_VALUES) --wait --timeout 10m

kind-test: ## run the chart's helm test pods (API smoke test, Prometheus target)
	$(HELM_KIND) test $(RELEASE) --logs

kind-forward: ## port-forward UI :8501, API :8000, Grafana :3000, Prometheus :9090 until Ctrl-C
	@trap 'kill $$(jobs -p) 2>/dev/null' INT TERM EXIT; \
	$(KUBECTL) port-forward svc/$(FULLNAME)-ui 8501:8501 & \
	$(KUBECTL) port-forward svc/$(FULLNAME)-backend 8000:8000 & \
	$(KUBECTL) port-forward svc/$(RELEASE)-grafana 3000:80 & \
	$(KUBECTL) port-forward svc/gridwatch-stack-prometheus 9090:9090 & \
	echo "UI http://localhost:8501  API http://localhost:8000  Grafana http://localhost:3000  Prometheus http://localhost:9090"; \
	wait

kind-load: ## LOAD_SECONDS of open-loop /predict load from a pod in the cluster (spreads over replicas), then the HPA
	$(KUBECTL) run $(FULLNAME)-load --rm -i --restart=Never --image=$(REGISTRY)/gridwatch-backend:$(IMAGE_TAG) \
		--image-pull-policy=IfNotPresent --labels=$(FULLNAME)-backend-client=true -- \
		load --url http://$(FULLNAME)-backend:8000 --allow-remote --no-keepalive \
		--rps $(LOAD_RPS) --duration $(LOAD_SECONDS) --workers 32
	$(KUBECTL) get hpa $(FULLNAME)-backend

kind-stream: ## the stream on the cluster: NATS, consumers and KEDA (values-stream.yaml), then KEDA's ScaledObject
	$(HELM_KIND) upgrade --install $(RELEASE) $(CHART) --create-namespace $(STREAM_VALUES) --wait --timeout 10m
	kubectl --context $(CLUSTER) wait --for condition=established crd/scaledobjects.keda.sh --timeout 5m
	$(HELM_KIND) upgrade --install $(RELEASE) $(CHART) $(STREAM_VALUES) --wait --timeout 10m
	$(KUBECTL) get scaledobject/$(FULLNAME)-stream deployment/$(FULLNAME)-stream

kind-publish: ## LOAD_SECONDS of simulated feeders over MQTT through a port-forward, then KEDA's view and the consumers
	@trap 'kill $$(jobs -p) 2>/dev/null' INT TERM EXIT; \
	$(KUBECTL) port-forward svc/$(NATS_FULLNAME) 1883:1883 >/dev/null & \
	timeout 30 python3 -c "import socket, time; [time.sleep(0.2) for _ in iter(lambda: socket.socket().connect_ex(('127.0.0.1', 1883)), 0)]" && \
	$(UV) run gridwatch publish --url mqtt://127.0.0.1:1883 --rate $(PUBLISH_RATE) --duration $(LOAD_SECONDS) \
		--feeders 8 --sensors 10
	$(KUBECTL) get scaledobject/$(FULLNAME)-stream hpa/keda-hpa-$(FULLNAME)-stream deployment/$(FULLNAME)-stream

kind-redeploy: kind-build kind-push kind-deploy ## rebuild and push the images of the working tree, roll the release onto them

kind-down: ## delete the kind cluster and its registry
	ctlptl delete -f ctlptl.yaml
