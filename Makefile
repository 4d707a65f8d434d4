# nodetrust — see README.md. `make ci` is the whole test suite (.ci/run).
SHELL := /bin/bash
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)
BIN     := bin/nodetrust
IMAGE   ?= ghcr.io/nodetrust/nodetrust
DEMO_ROOT ?= /tmp/nodetrust-demo
export NODETRUST_CACHE ?= $(HOME)/.cache/nodetrust

.PHONY: all build plugin image demo test fuzz bench fmt vet lint deps test-loaders test-truststore test-image test-systemd test-cluster test-lease test-check test-faults test-chart bench-cluster e2e test-layouts test-node test-real ci clean

all: build

build:
	CGO_ENABLED=0 go build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/nodetrust

# The kubectl plugin: bin/kubectl-nodetrust, a symlink to the binary, which
# offers `kubectl nodetrust status|check|version` when run under that name.
# Put bin/ on $PATH (or copy both) and `kubectl plugin list` shows it.
plugin: build
	ln -sf nodetrust bin/kubectl-nodetrust

# An OCI (docker-archive) image tarball built with pure Go, no Docker engine:
# load it with `ctr -n k8s.io images import bin/nodetrust-image.tar`.
image: build
	cd tools/image && go run . -bin $(CURDIR)/$(BIN) -o $(CURDIR)/bin/nodetrust-image.tar -tag $(IMAGE):$(VERSION)

# The main job on a fresh machine: apply the examples to a demo host root
# that has containerd, Docker and containers/image config directories.
demo: build
	mkdir -p $(DEMO_ROOT)/etc/containerd $(DEMO_ROOT)/etc/docker $(DEMO_ROOT)/etc/containers
	$(BIN) apply -f examples/ --host-root $(DEMO_ROOT)
	@find $(DEMO_ROOT)/etc -type f | sort

# Fast unit tests (seconds); fuzz targets run their seed corpus here; the
# deploy/ manifests are rendered with kustomize and checked.
test:
	go test -race -count=1 ./...
	cd test && go test -count=1 ./image/...

# A short real fuzzing session per target.
fuzz:
	go test -run '^$$' -fuzz FuzzParse -fuzztime 30s ./pkg/registry/
	go test -run '^$$' -fuzz FuzzParse -fuzztime 30s ./pkg/certs/

bench:
	go test -run '^$$' -bench . -benchmem -benchtime 3x ./pkg/...

fmt:
	gofmt -w $$(git ls-files '*.go')

vet:
	go vet ./...
	cd test && go vet ./...
	cd test/loaders/containerd17 && go vet ./...
	cd tools/image && go vet ./...

lint: vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi

# Debian packages for the real-component suites (idempotent, fast when present).
deps:
	test/scripts/deps.sh

# containerd (v2 and 1.7), moby and containers/image load what apply wrote.
test-loaders: build
	NODETRUST_BIN=$(CURDIR)/$(BIN) test/loaders/run.sh

# A debootstrapped Debian root (cached) runs its own update-ca-certificates,
# openssl and curl around apply with host trust.
test-truststore: build deps
	cd test && NODETRUST_REAL=1 NODETRUST_BIN=$(CURDIR)/$(BIN) go test -count=1 ./truststore/...

# A real containerd imports the image tarball (built by tools/image) and runs it.
test-image: build deps
	cd test && NODETRUST_REAL=1 NODETRUST_BIN=$(CURDIR)/$(BIN) go test -count=1 ./image/...

# systemd 252 booted in nspawn from the cached Debian root: restarts through
# D-Bus, the agent restarting only after trust store changes, and ten nodes
# sharing restart slots on a real API server.
test-systemd: build deps
	test/scripts/k8s-build.sh
	cd test && NODETRUST_REAL=1 NODETRUST_BIN=$(CURDIR)/$(BIN) go test -count=1 -timeout 20m ./systemd/...

# A real kube-apiserver + etcd (built from Go modules once, cached), deploy/
# applied with kubectl -k, agents as local processes with the ServiceAccount's
# token; kwok fake nodes prove the DaemonSet schedules everywhere.
test-cluster: build
	NODETRUST_BIN=$(CURDIR)/$(BIN) test/scripts/k8s-test.sh

# Propagation latency with 1, 10 and 100 agents on the real API server,
# API requests per agent, and the RSS of one agent with 100 sources.
bench-cluster: build
	test/scripts/k8s-build.sh
	cd test && NODETRUST_REAL=1 NODETRUST_BENCH=1 NODETRUST_BIN=$(CURDIR)/$(BIN) go test -count=1 -timeout 20m -run TestBenchPropagation -v ./cluster/...

# Restart slots on Leases: 10 clients with the agent's token, never more than N holders.
test-lease:
	test/scripts/k8s-build.sh
	cd test && NODETRUST_REAL=1 go test -count=1 ./lease/...

# Fault injection on the built binary (test/faults/README.md): apply killed
# at each write system call (strace), overlapping applies, a full tmpfs,
# ENAMETOOLONG. Local directory mode, so the counts it prints are shown.
test-faults: build
	cd test && NODETRUST_BIN=$(CURDIR)/$(BIN) go test -count=1 -timeout 10m ./faults/...

# nodetrust check against real docker-registry instances under alias names
# (right/wrong CA, CN-only, missing intermediate, expired, closed port,
# unknown name): its verdict must equal a real CRI pull through containerd
# 1.6 and skopeo in every case, and agent --verify's, on a manifest directory
# and for a Node on the real API server (test/e2e/README.md). Needs root.
test-check: build deps
	NODETRUST_SKIP_DEPS=1 test/scripts/k8s-build.sh
	cd test && NODETRUST_REAL=1 NODETRUST_BIN=$(CURDIR)/$(BIN) NODETRUST_E2E_REPORT=$(NODETRUST_CACHE)/e2e/check-report.txt \
		go test -count=1 -v -timeout 5m -run 'TestCheckMatchesPulls|TestCheckAgentOnAPIServer|TestCheckConfigPathUnset' ./e2e/...

# The Helm chart (deploy/chart/nodetrust) rendered and linted with Helm's Go
# library and compared object by object with deploy/; its values schema; the
# alert rules parsed and run with Prometheus's Go module; with the cached
# kube-apiserver (test/scripts/k8s-build.sh) also installed, upgraded and
# uninstalled for real, the Own-Node admission policy proven with a pod-bound
# token, kubectl nodetrust run by the real kubectl (test/chart/README.md).
test-chart: plugin
	test/scripts/k8s-build.sh
	cd test && NODETRUST_REAL=1 NODETRUST_BIN=$(CURDIR)/$(BIN) go test -count=1 -timeout 6m ./chart/...

test-real: test-loaders test-truststore test-image test-systemd test-cluster test-lease test-faults test-chart

# The end-to-end story on one real node: a private-CA registry, containerd
# pulling through CRI, the API server and an agent (test/e2e/README.md).
e2e: build
	NODETRUST_BIN=$(CURDIR)/$(BIN) test/e2e/run.sh

# Real CRI pulls on each node layout (test/e2e TestLayoutPulls): Debian's
# containerd 1.6 and containerd 2.2.4 built from Go modules (cached by
# test/scripts/containerd2-build.sh, ~3.5 min cold). Report:
# $NODETRUST_CACHE/e2e/layout-report.txt.
test-layouts: build deps
	test/scripts/containerd2-build.sh
	cd test && NODETRUST_REAL=1 NODETRUST_BIN=$(CURDIR)/$(BIN) \
		NODETRUST_CONTAINERD2=$$($(CURDIR)/test/scripts/containerd2-build.sh --print-bin) \
		NODETRUST_LAYOUT_REPORT=$${NODETRUST_LAYOUT_REPORT:-$(NODETRUST_CACHE)/e2e/layout-report.txt} \
		go test -count=1 -v -timeout 15m -run TestLayoutPulls ./e2e/...

# deploy/ as shipped (through test/node/overlay) on a real kubelet: a Debian
# root booted with systemd-nspawn runs containerd (Debian's 1.6, then 2.2.4
# from test/scripts/containerd2-build.sh) and the kubelet; a pod
# pulling from a private-CA registry fails with x509 until its Secret is
# labelled (test/node/README.md). Needs root. Report:
# $NODETRUST_CACHE/node/report.txt.
test-node: image deps
	NODETRUST_SKIP_DEPS=1 test/scripts/k8s-build.sh --kubelet
	test/scripts/containerd2-build.sh
	cd test && NODETRUST_REAL=1 NODETRUST_BIN=$(CURDIR)/$(BIN) NODETRUST_IMAGE_TAR=$(CURDIR)/bin/nodetrust-image.tar \
		NODETRUST_CONTAINERD2=$$($(CURDIR)/test/scripts/containerd2-build.sh --print-bin) \
		NODETRUST_NODE_REPORT=$${NODETRUST_NODE_REPORT:-$(NODETRUST_CACHE)/node/report.txt} \
		go test -count=1 -v -timeout 20m ./node/...

# The whole suite, as CI runs it.
ci: lint test test-real e2e test-node

clean:
	rm -rf bin
