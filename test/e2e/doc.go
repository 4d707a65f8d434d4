// Package e2e is nodetrust's end-to-end story on one real node: a real
// kube-apiserver (test/cluster), the nodetrust agent as a local process, a
// real containerd 1.6 pulling through CRI from a real registry behind a
// private CA, skopeo (containers/image) reading /etc/containers/certs.d and
// /etc/docker/certs.d, and curl inside a debootstrapped Debian root for the
// host trust store. See README.md. The tests skip unless NODETRUST_REAL=1.
package e2e
