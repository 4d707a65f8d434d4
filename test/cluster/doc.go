// Package cluster runs nodetrust's agent against a real kube-apiserver (built
// from Go modules by test/scripts/k8s-build.sh) backed by Debian's etcd, both
// started by test/harness. The agent runs as local processes, one per
// (API-only) Node object, each with its own host root in a temporary
// directory; it authenticates with a ServiceAccount token from TokenRequest,
// so the RBAC in deploy/ is what is exercised. See README.md.
package cluster
