package e2e

import (
	"testing"

	"github.com/nodetrust/nodetrust/test/harness"
)

// report is the story's record (harness.Report).
type report = harness.Report

func newReport(t *testing.T) *report {
	return newReportAs(t, "nodetrust end-to-end report (test/e2e)", "NODETRUST_E2E_REPORT")
}

// newReportAs is newReport with its own title and the variable naming its
// file ($env; a new /tmp/nodetrust-e2e-*/report.txt when unset).
func newReportAs(t *testing.T, title, env string) *report {
	return harness.NewReport(t, title, env, "nodetrust-e2e-")
}
