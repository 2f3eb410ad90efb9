# lastcall: build, test and lint. `make help` lists the targets.

GO        ?= go
BIN       := bin
TESTBIN   := $(CURDIR)/.testbin
TOOLS     := $(CURDIR)/.tools
# The release (semantic version): the chart's appVersion, which is the tag
# of the images the chart installs by default, and of the images `make
# image` writes. A release is tagged v$(RELEASE) in git.
RELEASE   := $(shell sed -n 's/^appVersion: *"*\([^"]*\)"*$$/\1/p' charts/lastcall/Chart.yaml)
# What the binaries' --version prints: the commit they are built from.
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
STATICCHECK_VERSION := v0.8.2
ACTIONLINT_VERSION := v1.7.12
EC2_METADATA_MOCK_VERSION := v1.13.0
HELM_VERSION := v3.22.0
KWOK_VERSION := v0.8.0
# aws-node-termination-handler, which make bench measures and make e2e runs
# beside lastcall (IMDS mode, against the EC2 metadata mock): the version
# hack/nth/go.mod pins.
NTH_VERSION := $(lastword $(shell grep 'aws-node-termination-handler v' hack/nth/go.mod))
# `make fleet`: its size, the time at rest it measures, its report.
FLEET_NODES  ?= 1000
FLEET_IDLE   ?= 5m
FLEET_REPORT ?= $(CURDIR)/bench/fleet.md
# More of the benchmark's flags, for example -fleet.flowcontrol.
FLEET_FLAGS  ?=
# More flags of make e2e's go test, e.g. -run 'TestRealNode/(helm-install|sidecar-injected|kubectl-drain)'
# (the steps before the one wanted set the cluster up).
E2E_FLAGS    ?=

export KUBEBUILDER_ASSETS := $(TESTBIN)
export LASTCALL_TESTBIN := $(TESTBIN)
export LASTCALL_HELM := $(TOOLS)/helm
# The SQS-compatible server the SQS example's test runs (npm, needs Node.js).
SQS_EMULATOR := $(TOOLS)/fauxqs/serve.mjs
export LASTCALL_SQS_EMULATOR := $(SQS_EMULATOR)
export LASTCALL_RULECHECK := $(TOOLS)/rulecheck
export LASTCALL_KWOK := $(TOOLS)/kwok

# Images: `make image` writes each image as a multi-platform OCI image
# index in an OCI layout directory under bin/images/, without a container
# engine or registry (hack/ociimage, go-containerregistry), and this
# machine's platform's image as a docker archive beside it (`docker load`,
# `ctr images import`: the e2e cluster's); `make push
# REGISTRY=host:port` pushes them and the chart; `make image-docker` builds
# the same two with the Dockerfile.
IMAGE_REPO ?= ghcr.io/lastcall-dev
IMAGE_TAG  ?= $(RELEASE)
IMAGES     := $(BIN)/images
PLATFORMS  ?= linux/amd64,linux/arm64
OCIIMAGE   := $(TOOLS)/ociimage
# `make push`: where to, e.g. 127.0.0.1:5000 or ghcr.io (credentials from
# `docker login` / `helm registry login`). The images go to
# $(REGISTRY)/lastcall-dev/{lastcall,sidecar}:$(IMAGE_TAG), the chart to
# oci://$(REGISTRY)/lastcall-dev/charts/lastcall; a loopback registry is
# spoken to over plain HTTP.
REGISTRY   ?=
PLAIN_HTTP  = $(if $(filter 127.% localhost%,$(REGISTRY)),--plain-http)
# CA roots for the agent's webhook HTTPS, from the build machine
# (Debian: ca-certificates).
CA_BUNDLE  ?= /etc/ssl/certs/ca-certificates.crt

.PHONY: release-version help build test test-arm64 test-oldest testbin-oldest unit lint chart-lint testbin nodebin bench fleet demo image image-docker push test-images e2e-images cluster-up cluster-down e2e clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

build: ## build the binaries into bin/
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

test: testbin $(TOOLS)/helm $(SQS_EMULATOR) $(TOOLS)/rulecheck ## everything CI runs: lint; all tests with -race against the real control plane; the examples' (Pub/Sub, SQS, NATS against real servers); the images through a registry, the arm64 binaries under qemu, and the oldest supported Kubernetes
	$(MAKE) lint
	$(GO) test -race -count=1 -timeout 20m ./...
	cd examples && $(GO) test -race -count=1 -timeout 10m ./...
	$(MAKE) --no-print-directory test-images test-arm64 test-oldest

# The oldest Kubernetes minor the chart supports (Chart.yaml kubeVersion),
# built by hack/testbin.sh oldest into .testbin/$(OLDEST_KUBE)/.
OLDEST_KUBE := v1.30.14

testbin-oldest: testbin
	./hack/testbin.sh oldest

test-oldest: testbin-oldest $(TOOLS)/helm $(TOOLS)/rulecheck ## the chart (install, admission policies, eviction guard), injector, drainer and kubeclient tests against kube-apiserver $(OLDEST_KUBE)
	KUBEBUILDER_ASSETS=$(TESTBIN)/$(OLDEST_KUBE) LASTCALL_KUBE_VERSION=$(OLDEST_KUBE) \
		$(GO) test -race -count=1 -timeout 20m ./charts/ ./injector/ ./drainer/ ./kubeclient/


# The linux/arm64 binaries of `make image` under qemu-aarch64 (Debian's
# qemu-user): --version of all three, and a GCE notice through the arm64
# agent and an arm64 sidecar to a worker (against the real control plane);
# then the sidecar's and the worker client's tests built for arm64 (-short:
# those that start no other process; no -race, which needs cgo there).
test-arm64: image testbin
	@command -v qemu-aarch64 >/dev/null || { echo "qemu-aarch64 missing: apt-get install qemu-user"; exit 1; }
	LASTCALL_EXEC=qemu-aarch64 LASTCALL_BIN_ARCH=arm64 LASTCALL_AGENT_BIN=$(CURDIR)/$(BIN)/image/linux-arm64/node-agent \
		LASTCALL_SIDECAR_BIN=$(CURDIR)/$(BIN)/image/linux-arm64/sidecar LASTCALL_INJECTOR_BIN=$(CURDIR)/$(BIN)/image/linux-arm64/injector \
		$(GO) test -count=1 -v -run '^(TestVersions|TestGCENoticeThroughSidecar)$$' ./cmd/node-agent/
	GOARCH=arm64 $(GO) test -short -count=1 -exec qemu-aarch64 ./sidecar/...

unit: ## only the tests that need no control plane (-short)
	$(GO) test -race -short -count=1 ./...
	cd examples && $(GO) test -race -short -count=1 ./...

testbin: $(TESTBIN)/ec2-metadata-mock ## build etcd, kube-apiserver, kube-controller-manager and the EC2 metadata mock into .testbin/
	./hack/testbin.sh

$(TESTBIN)/ec2-metadata-mock:
	GOBIN=$(TESTBIN) $(GO) install github.com/aws/amazon-ec2-metadata-mock/cmd/ec2-metadata-mock@$(EC2_METADATA_MOCK_VERSION)

$(SQS_EMULATOR): examples/sqs/emulator/package.json examples/sqs/emulator/package-lock.json examples/sqs/emulator/serve.mjs
	rm -rf $(TOOLS)/fauxqs && mkdir -p $(TOOLS)/fauxqs && cp $^ $(TOOLS)/fauxqs/
	cd $(TOOLS)/fauxqs && npm ci --no-audit --no-fund --loglevel=error

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

$(TOOLS)/actionlint:
	GOBIN=$(TOOLS) $(GO) install github.com/rhysd/actionlint/cmd/actionlint@$(ACTIONLINT_VERSION)

lint: $(TOOLS)/staticcheck $(TOOLS)/actionlint ## gofmt, go vet, staticcheck, and actionlint on .github/workflows
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(TOOLS)/actionlint
	$(GO) vet ./...
	$(TOOLS)/staticcheck ./...
	cd examples && $(GO) mod tidy -diff && $(GO) vet ./... && $(TOOLS)/staticcheck ./...
	cd hack/ociimage && $(GO) mod tidy -diff && $(GO) vet ./... && $(TOOLS)/staticcheck ./...

release-version: ## print the release (the chart's appVersion, the images' default tag)
	@echo $(RELEASE)

bench: testbin $(TOOLS)/node-termination-handler $(TOOLS)/node-termination-handler-qps ## run the benchmarks (real control plane, real binaries; root, for the peer benchmark's cgroups) and write bench/README.md; takes about 14 minutes
	@rm -f $(BIN)/bench.txt; mkdir -p $(BIN)
	$(GO) test -run '^$$' -bench . ./watcher/gce 2>&1 | tee -a $(BIN)/bench.txt
	$(GO) test -run '^$$' -bench 'Detection$$' -benchtime 100x ./watcher/ec2 2>&1 | tee -a $(BIN)/bench.txt
	$(GO) test -run '^$$' -bench DetectionOther -benchtime 12x ./watcher/ec2 2>&1 | tee -a $(BIN)/bench.txt
	$(GO) test -run '^$$' -bench . -benchtime 5x ./drainer/ 2>&1 | tee -a $(BIN)/bench.txt
	$(GO) test -run '^$$' -bench NodeAgent -benchtime 1x ./cmd/node-agent/ 2>&1 | tee -a $(BIN)/bench.txt
	$(GO) test -run '^$$' -bench Notify110 -benchtime 3x ./sidecar/ 2>&1 | tee -a $(BIN)/bench.txt
	$(GO) test -run '^$$' -bench . -benchtime 1x ./bench/drain/ 2>&1 | tee -a $(BIN)/bench.txt
	LASTCALL_NTH=$(TOOLS)/node-termination-handler LASTCALL_NTH_QPS=$(TOOLS)/node-termination-handler-qps $(GO) test -run '^$$' -bench PeerAWS110 -benchtime 1x -timeout 20m ./cmd/node-agent/ 2>&1 | tee -a $(BIN)/bench.txt
	$(GO) run ./bench/report -o bench/README.md < $(BIN)/bench.txt
	@echo "wrote bench/README.md"

# aws-node-termination-handler, for the peer benchmark and make e2e (not in
# make test): its version is pinned in hack/nth/go.mod, built as its release
# build does.
$(TOOLS)/node-termination-handler: hack/nth/go.mod hack/nth/go.sum
	cd hack/nth && CGO_ENABLED=0 $(GO) build -trimpath -tags nthlinux -ldflags '-s -w' -o $(TOOLS)/node-termination-handler github.com/aws/aws-node-termination-handler/cmd

# The same with the KUBE_API_QPS and KUBE_API_BURST settings of NTH's later
# releases, which the module proxy does not serve (hack/nth/qps.sh).
$(TOOLS)/node-termination-handler-qps: hack/nth/go.mod hack/nth/go.sum hack/nth/qps.sh
	rm -rf hack/nth/qps && hack/nth/qps.sh hack/nth/qps
	cd hack/nth && CGO_ENABLED=0 $(GO) build -trimpath -tags nthlinux -ldflags '-s -w' -o $(TOOLS)/node-termination-handler-qps ./qps
	rm -rf hack/nth/qps

$(TOOLS)/kwok:
	GOBIN=$(TOOLS) $(GO) install sigs.k8s.io/kwok/cmd/kwok@$(KWOK_VERSION)

fleet: nodebin $(TOOLS)/helm $(TOOLS)/kwok ## FLEET_NODES (1000) KWOK nodes, one agent each, 30 % preempted at once; writes bench/fleet.md; about 12 min, 8 GB
	@mkdir -p $(BIN)/fleet
	$(GO) test -run '^$$' -bench '^BenchmarkFleet$$' -benchtime 1x -timeout 60m ./cmd/node-agent \
		-fleet.nodes=$(FLEET_NODES) -fleet.idle=$(FLEET_IDLE) -fleet.report=$(FLEET_REPORT) -fleet.dir=$(CURDIR)/$(BIN)/fleet $(FLEET_FLAGS)

demo: ## a whole preemption on this machine (control plane, NATS JetStream, 3 nodes): prints a timeline; about a minute
	@test -x $(TESTBIN)/kube-apiserver || echo "building the control-plane binaries first (make testbin: etcd, kube-apiserver, kube-controller-manager; about 9 min on 2 cores, once)"
	@$(MAKE) --no-print-directory testbin
	$(GO) run ./cmd/demo

image: $(OCIIMAGE) ## build the images offline for linux/amd64 and linux/arm64 into bin/images/ (OCI layouts): lastcall (agent + injector) and sidecar
	@test -f $(CA_BUNDLE) || { echo "no CA bundle at $(CA_BUNDLE) (apt-get install ca-certificates, or set CA_BUNDLE)"; exit 1; }
	@mkdir -p $(IMAGES)
	@for p in $$(echo $(PLATFORMS) | tr , ' '); do \
		echo "building node-agent, injector, sidecar for $$p"; \
		CGO_ENABLED=0 GOOS=$${p%/*} GOARCH=$${p#*/} $(GO) build -trimpath -ldflags '$(LDFLAGS)' \
			-o $(BIN)/image/$${p%/*}-$${p#*/}/ ./cmd/node-agent ./cmd/injector ./cmd/sidecar || exit 1; \
	done
	$(OCIIMAGE) build -o $(IMAGES)/lastcall -tag $(IMAGE_TAG) -platforms $(PLATFORMS) \
		-entrypoint /usr/local/bin/node-agent -user 65532:65532 \
		-label org.opencontainers.image.source=https://github.com/lastcall-dev/lastcall -label org.opencontainers.image.version=$(IMAGE_TAG) \
		-add '$(BIN)/image/{os}-{arch}/node-agent:/usr/local/bin/node-agent' -add '$(BIN)/image/{os}-{arch}/injector:/usr/local/bin/injector' \
		-add $(CA_BUNDLE):/etc/ssl/certs/ca-certificates.crt \
		-archive $(IMAGES)/lastcall.tar -archive-ref $(IMAGE_REPO)/lastcall:$(IMAGE_TAG)
	$(OCIIMAGE) build -o $(IMAGES)/sidecar -tag $(IMAGE_TAG) -platforms $(PLATFORMS) \
		-entrypoint /usr/local/bin/sidecar -user 65532:65532 \
		-label org.opencontainers.image.source=https://github.com/lastcall-dev/lastcall -label org.opencontainers.image.version=$(IMAGE_TAG) \
		-add '$(BIN)/image/{os}-{arch}/sidecar:/usr/local/bin/sidecar' \
		-archive $(IMAGES)/sidecar.tar -archive-ref $(IMAGE_REPO)/sidecar:$(IMAGE_TAG)

$(OCIIMAGE): hack/ociimage/main.go hack/ociimage/go.mod hack/ociimage/go.sum
	cd hack/ociimage && GOBIN=$(TOOLS) $(GO) install .

push: $(TOOLS)/helm $(OCIIMAGE) ## push the images of `make image` and the chart (OCI) to REGISTRY=host:port
	@test -n "$(REGISTRY)" || { echo "usage: make push REGISTRY=host:port"; exit 1; }
	@test -d $(IMAGES)/lastcall -a -d $(IMAGES)/sidecar || { echo "no images in $(IMAGES): run make image first"; exit 1; }
	$(OCIIMAGE) push -layout $(IMAGES)/lastcall $(REGISTRY)/lastcall-dev/lastcall:$(IMAGE_TAG)
	$(OCIIMAGE) push -layout $(IMAGES)/sidecar $(REGISTRY)/lastcall-dev/sidecar:$(IMAGE_TAG)
	@rm -rf $(BIN)/chart && mkdir -p $(BIN)/chart
	$(TOOLS)/helm package charts/lastcall -d $(BIN)/chart
	$(TOOLS)/helm push $(BIN)/chart/lastcall-*.tgz oci://$(REGISTRY)/lastcall-dev/charts $(PLAIN_HTTP)

# The images and the chart through a real registry on loopback: both
# platforms of each image resolved by digest, each binary checked to be for
# its architecture; the chart pushed with helm push and read back.
test-images: image $(TOOLS)/helm
	cd hack/ociimage && LASTCALL_IMAGES=$(CURDIR)/$(IMAGES) LASTCALL_IMAGE_TAG=$(IMAGE_TAG) \
		LASTCALL_CHART=$(CURDIR)/charts/lastcall $(GO) test -count=1 -v ./...

image-docker: ## build the same two images with the Dockerfile for PLATFORMS (needs Docker with buildx and a registry for golang)
	docker buildx build --platform $(PLATFORMS) --build-arg VERSION=$(VERSION) --target lastcall -t $(IMAGE_REPO)/lastcall:$(IMAGE_TAG) .
	docker buildx build --platform $(PLATFORMS) --build-arg VERSION=$(VERSION) --target sidecar -t $(IMAGE_REPO)/sidecar:$(IMAGE_TAG) .

# The test-only images of the e2e cluster: its pause image, the worker, and
# aws-node-termination-handler (it reads only the in-cluster config, so it
# runs as a pod).
e2e-images: $(TOOLS)/node-termination-handler
	@mkdir -p $(IMAGES) $(BIN)/image
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o $(BIN)/image/ ./hack/pause ./e2e/worker
	$(GO) run ./hack/mkimage -o $(IMAGES)/pause.tar -tag registry.k8s.io/pause:3.10 -entrypoint /pause \
		-user 65535:65535 -add $(BIN)/image/pause:/pause
	$(GO) run ./hack/mkimage -o $(IMAGES)/e2e-worker.tar -tag lastcall.dev/e2e-worker:$(IMAGE_TAG) \
		-entrypoint /worker -user 65532:65532 -add $(BIN)/image/worker:/worker
	$(GO) run ./hack/mkimage -o $(IMAGES)/e2e-nth.tar -tag lastcall.dev/e2e-nth:$(NTH_VERSION) \
		-entrypoint /node-termination-handler -user 65532:65532 -add $(TOOLS)/node-termination-handler:/node-termination-handler

nodebin: testbin $(TOOLS)/helm
	./hack/testbin.sh node

# The e2e cluster's registry on loopback (hack/cluster.sh).
E2E_REGISTRY := 127.0.0.1:25213

cluster-up: image e2e-images nodebin ## start a real one-node cluster here (root; containerd, runc, CNI, a registry with the images and chart); KUBECONFIG=/var/lib/lastcall-e2e/admin.kubeconfig
	LASTCALL_REGISTRY=$(E2E_REGISTRY) ./hack/cluster.sh up $(IMAGES)/pause.tar $(IMAGES)/e2e-worker.tar $(IMAGES)/e2e-nth.tar
	$(MAKE) --no-print-directory push REGISTRY=$(E2E_REGISTRY)

cluster-down: ## stop the cluster of cluster-up and remove all it made
	./hack/cluster.sh down

e2e: image e2e-images nodebin ## on a real one-node cluster: make push to its registry, the install docs' commands, GCE and AWS preemptions, scale-down, agent killed mid-drain, kubectl drain, NTH beside lastcall, Karpenter's and cluster-autoscaler's taints
	LASTCALL_E2E_IMAGE_TAG=$(IMAGE_TAG) LASTCALL_E2E_NTH_TAG=$(NTH_VERSION) LASTCALL_KUBECTL=$(TESTBIN)/kubectl LASTCALL_REGISTRY=$(E2E_REGISTRY) ./hack/e2e.sh $(E2E_FLAGS)

clean: ## remove build outputs (keeps .testbin/)
	rm -rf $(BIN)
