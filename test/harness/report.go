package harness

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// Report is a story's timed record of steps (result, seconds, a one-line
// detail), written when the test ends, also on failure, to the file its
// variable names or to a new temporary report.txt.
type Report struct {
	// StepWidth is the width of the step column (64 unless set).
	StepWidth int
	// Suffix is inserted before the report file's extension.
	Suffix string

	t          *testing.T
	title      string // first line of the report
	env        string // variable naming the file the report is written to
	tempPrefix string // of the temporary directory when $env is unset
	started    time.Time
	header     []string
	steps      []reportStep
}

type reportStep struct {
	name   string
	result string
	secs   float64
	detail string
}

// NewReport starts a report titled title, written to $env (or to a new
// tempPrefix* directory's report.txt) when t ends.
func NewReport(t *testing.T, title, env, tempPrefix string) *Report {
	r := &Report{StepWidth: 64, t: t, title: title, env: env, tempPrefix: tempPrefix, started: time.Now()}
	// Registered first, so it runs last: after every process is stopped, and
	// also when a step failed.
	t.Cleanup(r.write)
	return r
}

// Note adds a line to the report's header.
func (r *Report) Note(format string, args ...any) {
	r.header = append(r.header, fmt.Sprintf(format, args...))
}

// Step runs fn as one timed step. fn returns a one-line detail; a t.Fatal
// inside fn marks the step FAIL (and ends the test).
func (r *Report) Step(name string, fn func() string) {
	r.t.Helper()
	i := len(r.steps)
	r.steps = append(r.steps, reportStep{name: name, result: "FAIL"})
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

// Add records a step that ran elsewhere (a subtest) with its result: "ok",
// "FAIL" or "skip".
func (r *Report) Add(name, result string, secs float64, detail string) {
	r.steps = append(r.steps, reportStep{name: name, result: result, secs: secs, detail: detail})
}

// Render is the report's text.
func (r *Report) Render() string {
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
	fmt.Fprintf(&b, "\n%-3s %-*s %-6s %8s  %s\n", "#", r.StepWidth, "step", "result", "seconds", "detail")
	for i, s := range r.steps {
		fmt.Fprintf(&b, "%-3d %-*s %-6s %8.2f  %s\n", i+1, r.StepWidth, s.name, s.result, s.secs, s.detail)
	}
	fmt.Fprintf(&b, "\n%s: %d steps in %.1f s (including teardown)\n", result, len(r.steps), total)
	return b.String()
}

func (r *Report) write() {
	text := r.Render()
	path := os.Getenv(r.env)
	if path == "" {
		dir, err := os.MkdirTemp("", r.tempPrefix)
		if err != nil {
			r.t.Errorf("report: %v", err)
			r.t.Log("\n" + text)
			return
		}
		path = filepath.Join(dir, "report.txt")
	}
	if r.Suffix != "" {
		ext := filepath.Ext(path)
		path = strings.TrimSuffix(path, ext) + r.Suffix + ext
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		r.t.Errorf("report: %v", err)
	} else if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		r.t.Errorf("report: %v", err)
	}
	r.t.Logf("\n%s\nreport written to %s", text, path)
}
