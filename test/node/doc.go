// Package node is nodetrust's real-node suite (`make test-node`): deploy/ as
// shipped runs as a DaemonSet on a real kubelet, and a workload pod's image
// pull from a private-CA registry is what it fixes.
//
// The control plane is etcd, kube-apiserver, kube-controller-manager and
// kube-scheduler on 127.0.0.1 (test/harness, binaries from
// test/scripts/k8s-build.sh --kubelet). The node is a Debian root of its own
// (test/scripts/debian-root.sh, with containerd 1.6 and the CNI plugins),
// booted with systemd-nspawn on the host's network: its systemd runs
// containerd and the kubelet, so the DaemonSet's hostPath / is that root and
// never this machine's, and a host-trust change restarts containerd through
// the node's real systemd. See README.md for the traps and a report.
package node
