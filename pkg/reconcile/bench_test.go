package reconcile_test

import (
	"fmt"
	"testing"

	"github.com/nodetrust/nodetrust/pkg/source"
)

// benchSet is 1,000 sources, each for 2 registries: with containerd, Docker
// and containers/image present that is 6,000 CA files and 2,000 hosts.toml.
func benchSet(b *testing.B) source.Set {
	var set source.Set
	for i := range 1000 {
		set.Sources = append(set.Sources, mkSource(b, fmt.Sprintf("s%04d", i),
			regs(fmt.Sprintf("r%04d.example:5000,mirror%04d.example", i, i))))
	}
	return set
}

func BenchmarkSyncEmptyRoot(b *testing.B) {
	set := benchSet(b)
	files := 0
	for b.Loop() {
		b.StopTimer()
		h := newHost(b, "etc/containerd", "etc/docker", "etc/containers")
		b.StartTimer()
		files = len(h.sync(set, nil).Written)
	}
	b.ReportMetric(float64(files), "files-written/op")
}

func BenchmarkSyncUnchanged(b *testing.B) {
	set := benchSet(b)
	h := newHost(b, "etc/containerd", "etc/docker", "etc/containers")
	h.sync(set, nil)
	files := 0
	for b.Loop() {
		files = len(h.sync(set, nil).Written)
	}
	b.ReportMetric(float64(files), "files-written/op")
}
