// Package lease proves pkg/lease against a real kube-apiserver
// (test/cluster): ten agents, each with its own client and the nodetrust
// ServiceAccount's token, compete for N restart slots, and a holder that
// crashes loses its slot once its Lease expires. See README.md. The tests
// skip unless NODETRUST_REAL=1.
package lease
