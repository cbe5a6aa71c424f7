# heapwatch: run `make help` for the targets.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

BIN        := $(CURDIR)/bin
ENVTEST    := $(BIN)/k8s
VERSITYGW  := $(BIN)/versitygw
LINT       := $(BIN)/lint
LINTERS    := $(LINT)/staticcheck $(LINT)/go-errorlint
VERSION    ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS    := -s -w -X main.version=$(VERSION)
REGISTRY   ?= ghcr.io/heapwatch
PLATFORMS  ?= linux/amd64,linux/arm64
# Test timeout for the whole suite; the end-to-end packages run real OOM kills.
TEST_TIMEOUT ?= 40m
# Fuzz time per target for `make fuzz`.
FUZZTIME   ?= 15s
# `make demo STORAGE=s3` runs the demo against a local S3-compatible server.
STORAGE    ?= file

# The environment every test run gets: the real kube-apiserver/etcd and the
# S3-compatible server, both built from the Go module proxy into ./bin.
TEST_ENV := KUBEBUILDER_ASSETS=$(ENVTEST) HEAPWATCH_VERSITYGW=$(VERSITYGW)

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build the webhook, sidecar, controller, CLI (also as kubectl-heapwatch) and example leaky app into ./bin.
	CGO_ENABLED=0 go build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/... ./examples/...
	ln -sf heapwatch $(BIN)/kubectl-heapwatch  # the CLI as a kubectl plugin: kubectl heapwatch ...

.PHONY: envtest
envtest: ## Build kube-apiserver and etcd for the integration tests (about 8 min cold, seconds when cached).
	go -C .ci/tools/envtest build -o $(ENVTEST)/kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
	go -C .ci/tools/envtest build -o $(ENVTEST)/etcd go.etcd.io/etcd/server/v3

.PHONY: versitygw
versitygw: ## Build the S3-compatible server (versitygw) the storage tests run against.
	go -C .ci/tools/versitygw build -o $(VERSITYGW) github.com/versity/versitygw/cmd/versitygw

# The linters, pinned in their own module; rebuilt only when it changes.
$(LINTERS) &: .ci/tools/lint/go.mod .ci/tools/lint/go.sum
	go -C .ci/tools/lint build -o $(LINT)/ honnef.co/go/tools/cmd/staticcheck codeberg.org/polyfloyd/go-errorlint

# Only e2e/node is behind a build tag (node, adding files): with -tags node
# staticcheck and errorlint see every file once.
.PHONY: lint
lint: $(LINTERS) ## gofmt, go vet (also -tags node), staticcheck and errorlint (pinned in .ci/tools/lint).
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	go vet ./...
	go vet -tags node ./...
	$(LINT)/staticcheck -tags node ./...
	GOFLAGS=-tags=node $(LINT)/go-errorlint -errorf ./...

.PHONY: demo
demo: ## See the main job: a leaky app OOM-killed in an emulated pod, its heap profile captured (root; STORAGE=file|s3).
	go run ./examples/demo -storage $(STORAGE) -dumps $(CURDIR)/heapwatch-dumps

.PHONY: test
test: lint envtest versitygw ## Lint, then every unit, integration and end-to-end test, then the story on a real node (root).
	$(TEST_ENV) go test -race -count=1 -p 1 -timeout $(TEST_TIMEOUT) ./...
	# The agent's PrometheusRule and dashboard, checked with Prometheus's parsers (own module: keeps them out of go.mod).
	go -C deploy/monitoring test -race -count=1 ./...
	$(MAKE) test-node

# `make test-v2 RUN=TestX` runs only the tests matching TestX in the VM.
RUN ?=

.PHONY: test-v2
test-v2: ## Run the real-kernel suites (podsim, cgroup, e2e) on cgroup v2 in a QEMU VM (RUN=TestX for one test).
	@rm -f $(BIN)/vm/summary
	HEAPWATCH_V2_RUN='$(RUN)' HEAPWATCH_V2_SUMMARY=$(BIN)/vm/summary go test -count=1 -v -timeout 30m ./e2e/cgroupv2/
	@cat $(BIN)/vm/summary

# The story on a real node: kubelet + containerd + runc in the cgroup v2 VM.
# internal/node builds the kubelet and kube-controller-manager (.ci/tools/node,
# ~7-10 and ~5 min cold) and containerd (.ci/tools/containerd, ~2 min) into
# ./bin/node when missing.
NODE_BIN := $(BIN)/node

.PHONY: test-node
test-node: envtest versitygw ## Run the user's story alone on a real kubelet + containerd + runc node in the cgroup v2 VM (also the last step of `make test`).
	@rm -f $(NODE_BIN)/summary
	$(TEST_ENV) HEAPWATCH_NODE_SUMMARY=$(NODE_BIN)/summary go test -tags node -count=1 -v -timeout 30m ./e2e/node/
	@cat $(NODE_BIN)/summary

.PHONY: bench
bench: envtest versitygw ## Run the benchmarks: admission latency, detection latency, capture rate, CPU, memory; then the real node's.
	$(TEST_ENV) go test -run '^$$' -bench . -benchmem -timeout 60m ./...
	$(MAKE) bench-node

.PHONY: bench-node
bench-node: envtest versitygw ## The capture rate on the real node (HEAPWATCH_NODE_KILLS per leak shape, default 10) and the time from the app's start to the sidecar watching it.
	$(TEST_ENV) go test -tags node -run '^$$' -bench . -timeout 90m ./e2e/node/

.PHONY: fuzz
fuzz: ## Run every fuzz target for FUZZTIME each.
	@for pkg in $$(go list ./...); do \
	  for f in $$(go test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$f"; go test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; \
	done

.PHONY: run-webhook
run-webhook: ## Run the webhook here with a self-signed certificate (caBundle: /tmp/heapwatch-webhook-tls/ca.crt).
	go run ./cmd/webhook --sidecar-image $(REGISTRY)/heapwatch-sidecar:$(VERSION) --cert-dir /tmp/heapwatch-webhook-tls --self-signed localhost,127.0.0.1

.PHONY: images
images: ## Build the container images (needs a Docker engine with buildx).
	docker buildx build --platform $(PLATFORMS) --build-arg VERSION=$(VERSION) -f Dockerfile.webhook -t $(REGISTRY)/heapwatch-webhook:$(VERSION) .
	docker buildx build --platform $(PLATFORMS) --build-arg VERSION=$(VERSION) -f Dockerfile.sidecar -t $(REGISTRY)/heapwatch-sidecar:$(VERSION) .
	docker buildx build --platform $(PLATFORMS) --build-arg VERSION=$(VERSION) -f Dockerfile.controller -t $(REGISTRY)/heapwatch-controller:$(VERSION) .
	docker buildx build --platform $(PLATFORMS) --build-arg VERSION=$(VERSION) -f Dockerfile.agent -t $(REGISTRY)/heapwatch-agent:$(VERSION) .
