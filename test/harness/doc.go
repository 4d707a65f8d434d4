// Package harness is what nodetrust's test suites share, each piece once, one
// file per noun:
//
//   - env.go: NODETRUST_REAL (Real, SkipUnlessReal, SkipUnlessRoot), the
//     repository and cache directories, the cached Kubernetes binaries, the
//     cached Debian root, free ports.
//   - binary.go: the nodetrust binary under test, $NODETRUST_BIN or built once
//     per test process.
//   - pki.go: the certificate issuer (CA, leaf, intermediate, expired,
//     serving chains); pool.go: cert pools as containerd builds them.
//   - containerdlog.go: what containerd's own loaders log.
//   - registry.go: Debian's docker-registry serving TLS, and a push to it.
//   - trust.go: whether a host root's runtimes trust a leaf, the contract's
//     labels and annotations.
//   - snapshot.go: the tree walk under every suite's snapshot, the host
//     root snapshots of the agent tests and their differences.
//   - proc.go: a child process with its log.
//   - apiserver.go, controllers.go, controlplane.go: kube-apiserver + etcd,
//     controller-manager, scheduler and kwok.
//   - agent.go: the agent as a local process on that API server.
//   - nspawn.go: a systemd-nspawn machine (Machine) booted in private
//     cgroups, its leader PID, its halt; the systemd and node suites add
//     their options (network, capabilities, binds) and readiness checks.
//   - report.go: the timed step reports of test/e2e and test/node.
//
// Black-box by design: it drives the built binary and imports no product
// package beyond what the suites already use.
package harness
