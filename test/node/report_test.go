package node

import (
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/nodetrust/nodetrust/test/harness"
)

// report is the story's timed record (harness.Report), written to
// $NODETRUST_NODE_REPORT (or a new temporary file) when the test ends, also
// on failure.
type report = harness.Report

func newReport(t *testing.T, suffix string) *report {
	r := harness.NewReport(t, "nodetrust real-node report (test/node)", "NODETRUST_NODE_REPORT", "nodetrust-node-")
	r.StepWidth, r.Suffix = 58, suffix
	return r
}

// quantiles returns the median and the maximum of ds.
func quantiles(ds []time.Duration) (p50, max time.Duration) {
	if len(ds) == 0 {
		return 0, 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2], s[len(s)-1]
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2fs", d.Seconds()) }
