# lastcall: build, test and lint. `make help` lists the targets.

GO        ?= go
BIN       := bin
TESTBIN   := $(CURDIR)/.testbin
TOOLS     := $(CURDIR)/.tools
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
STATICCHECK_VERSION := v0.8.2
EC2_METADATA_MOCK_VERSION := v1.13.0
HELM_VERSION := v3.22.0

export KUBEBUILDER_ASSETS := $(TESTBIN)
export LASTCALL_TESTBIN := $(TESTBIN)
export LASTCALL_HELM := $(TOOLS)/helm
export LASTCALL_RULECHECK := $(TOOLS)/rulecheck

.PHONY: help build test unit lint chart-lint testbin bench demo image clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

build: ## build the binaries into bin/
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

test: testbin $(TOOLS)/helm $(TOOLS)/rulecheck ## everything CI runs: lint, then all tests with -race against the real control plane
	$(MAKE) lint
	$(GO) test -race -count=1 -timeout 20m ./...

unit: ## only the tests that need no control plane (-short)
	$(GO) test -race -short -count=1 ./...

testbin: $(TESTBIN)/ec2-metadata-mock ## build etcd, kube-apiserver, kube-controller-manager and the EC2 metadata mock into .testbin/
	./hack/testbin.sh

$(TESTBIN)/ec2-metadata-mock:
	GOBIN=$(TESTBIN) $(GO) install github.com/aws/amazon-ec2-metadata-mock/cmd/ec2-metadata-mock@$(EC2_METADATA_MOCK_VERSION)

$(TOOLS)/staticcheck:
	GOBIN=$(TOOLS) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

# The -X values are those of helm's own release build: its version, and the
# Kubernetes version of its client-go (v0.37 for helm v3.22.0), which `helm
# template` assumes without --kube-version (v1.20 if left unset).
HELM_LDFLAGS := -s -w -X helm.sh/helm/v3/internal/version.version=$(HELM_VERSION) \
	-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=37 \
	-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=37

$(TOOLS)/helm:
	GOBIN=$(TOOLS) $(GO) install -ldflags '$(HELM_LDFLAGS)' helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

# Prometheus's rule and PromQL parsers (what `promtool check rules` runs),
# in a module of their own under hack/rulecheck so that they add nothing to
# the project's go.mod; promtool itself would build all of service discovery.
$(TOOLS)/rulecheck: hack/rulecheck/main.go hack/rulecheck/go.mod
	cd hack/rulecheck && GOBIN=$(TOOLS) $(GO) install .

chart-lint: $(TOOLS)/helm ## helm lint the chart in charts/lastcall
	$(TOOLS)/helm lint --strict charts/lastcall

lint: $(TOOLS)/staticcheck ## gofmt, go vet and staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(TOOLS)/staticcheck ./...

bench: testbin ## run the benchmarks (real control plane, real binaries) and write bench/README.md; takes about 4 minutes
	@rm -f $(BIN)/bench.txt; mkdir -p $(BIN)
	$(GO) test -run '^$$' -bench . ./watcher/gce 2>&1 | tee -a $(BIN)/bench.txt
	$(GO) test -run '^$$' -bench . -benchtime 20x ./watcher/ec2 2>&1 | tee -a $(BIN)/bench.txt
	$(GO) test -run '^$$' -bench . -benchtime 5x ./drainer/ 2>&1 | tee -a $(BIN)/bench.txt
	$(GO) test -run '^$$' -bench . -benchtime 1x ./cmd/node-agent/ 2>&1 | tee -a $(BIN)/bench.txt
	$(GO) test -run '^$$' -bench Notify110 -benchtime 3x ./sidecar/ 2>&1 | tee -a $(BIN)/bench.txt
	$(GO) test -run '^$$' -bench . -benchtime 1x ./bench/drain/ 2>&1 | tee -a $(BIN)/bench.txt
	$(GO) run ./bench/report -o bench/README.md < $(BIN)/bench.txt
	@echo "wrote bench/README.md"

demo: ## a whole preemption on this machine (control plane, NATS JetStream, 3 nodes): prints a timeline; about a minute
	@test -x $(TESTBIN)/kube-apiserver || echo "building the control-plane binaries first (make testbin: etcd, kube-apiserver, kube-controller-manager; about 9 min on 2 cores, once)"
	@$(MAKE) --no-print-directory testbin
	$(GO) run ./cmd/demo

image: ## build the container image (needs a Docker engine)
	docker build --build-arg VERSION=$(VERSION) -t lastcall:$(VERSION) .

clean: ## remove build outputs (keeps .testbin/)
	rm -rf $(BIN)
