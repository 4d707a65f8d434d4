package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// report records each story step: result, seconds and a one-line detail.
type report struct {
	t       *testing.T
	title   string // first line of the report
	env     string // variable naming the file the report is written to
	started time.Time
	header  []string
	steps   []stepResult
}

type stepResult struct {
	name   string
	result string
	secs   float64
	detail string
}

func newReport(t *testing.T) *report {
	return newReportAs(t, "nodetrust end-to-end report (test/e2e)", "NODETRUST_E2E_REPORT")
}

// newReportAs is newReport with its own title and the variable naming its
// file ($env; a new /tmp/nodetrust-e2e-*/report.txt when unset).
func newReportAs(t *testing.T, title, env string) *report {
	r := &report{t: t, title: title, env: env, started: time.Now()}
	// Registered first, so it runs last: after every process is stopped, and
	// also when a step failed.
	t.Cleanup(r.write)
	return r
}

func (r *report) note(format string, args ...any) {
	r.header = append(r.header, fmt.Sprintf(format, args...))
}

// step runs fn as one timed story step. fn returns a one-line detail; a
// t.Fatal inside fn marks the step FAIL (and ends the test).
func (r *report) step(name string, fn func() string) {
	r.t.Helper()
	i := len(r.steps)
	r.steps = append(r.steps, stepResult{name: name, result: "FAIL"})
	start := time.Now()
	r.t.Logf("==> %s", name)
	done := false
	defer func() {
		r.steps[i].secs = time.Since(start).Seconds()
		if done {
			r.steps[i].result = "ok"
			r.t.Logf("<== %s: ok in %.2fs: %s", name, r.steps[i].secs, r.steps[i].detail)
		} else {
			r.t.Logf("<== %s: FAIL after %.2fs", name, r.steps[i].secs)
		}
	}()
	r.steps[i].detail = fn()
	done = !r.t.Failed()
}

func (r *report) render() string {
	var b strings.Builder
	total := time.Since(r.started).Seconds()
	result := "PASS"
	if r.t.Failed() {
		result = "FAIL"
	}
	fmt.Fprintf(&b, "%s\n", r.title)
	fmt.Fprintf(&b, "date: %s   go: %s %s/%s   cpus: %d\n", r.started.UTC().Format(time.RFC3339), runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.NumCPU())
	for _, h := range r.header {
		fmt.Fprintf(&b, "%s\n", h)
	}
	fmt.Fprintf(&b, "\n%-3s %-64s %-6s %8s  %s\n", "#", "step", "result", "seconds", "detail")
	for i, s := range r.steps {
		fmt.Fprintf(&b, "%-3d %-64s %-6s %8.2f  %s\n", i+1, s.name, s.result, s.secs, s.detail)
	}
	fmt.Fprintf(&b, "\n%s: %d steps in %.1f s (including teardown)\n", result, len(r.steps), total)
	return b.String()
}

func (r *report) write() {
	text := r.render()
	path := os.Getenv(r.env)
	if path == "" {
		dir, err := os.MkdirTemp("", "nodetrust-e2e-")
		if err != nil {
			r.t.Errorf("report: %v", err)
			r.t.Log("\n" + text)
			return
		}
		path = filepath.Join(dir, "report.txt")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		r.t.Errorf("report: %v", err)
	} else if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		r.t.Errorf("report: %v", err)
	}
	r.t.Logf("\n%s\nreport written to %s", text, path)
}

// add records a step that ran elsewhere (a subtest) with its result: "ok",
// "FAIL" or "skip".
func (r *report) add(name, result string, secs float64, detail string) {
	r.steps = append(r.steps, stepResult{name: name, result: result, secs: secs, detail: detail})
}
