package harness

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// NewHostRoot makes a host root in which containerd, Docker and
// containers/image are present (their config directories exist).
func NewHostRoot(t testing.TB) string {
	t.Helper()
	root := t.TempDir()
	for _, d := range []string{"etc/containerd", "etc/docker", "etc/containers"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// AgentOptions configure one agent process.
type AgentOptions struct {
	Kubeconfig string
	Node       string
	Namespaces string // --namespaces; empty: nodetrust-system
	Root       string // --host-root
	Extra      []string
}

// Agent is one running `nodetrust agent`.
type Agent struct {
	Opts       AgentOptions
	HealthAddr string // 127.0.0.1:port
	Proc       *Proc
	Started    time.Time
	t          testing.TB
}

var agentSeq struct {
	sync.Mutex
	n int
}

// StartAgent runs `nodetrust agent` for opts. Its stderr/stdout go to a file
// in a temporary directory, printed when the test fails. It is stopped
// (SIGTERM) on cleanup if still running.
func StartAgent(t testing.TB, opts AgentOptions) *Agent {
	t.Helper()
	bin := Binary(t)
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	if opts.Namespaces == "" {
		opts.Namespaces = AgentNamespace
	}
	agentSeq.Lock()
	agentSeq.n++
	n := agentSeq.n
	agentSeq.Unlock()
	a := &Agent{Opts: opts, HealthAddr: fmt.Sprintf("127.0.0.1:%d", port), t: t}
	args := []string{"agent",
		"--kubeconfig", opts.Kubeconfig,
		"--node-name", opts.Node,
		"--namespaces", opts.Namespaces,
		"--host-root", opts.Root,
		"--health-addr", a.HealthAddr,
	}
	args = append(args, opts.Extra...)
	logPath := filepath.Join(t.TempDir(), fmt.Sprintf("agent-%s-%d.log", opts.Node, n))
	a.Started = time.Now()
	p, err := StartProc("nodetrust agent "+opts.Node, logPath, bin, args...)
	if err != nil {
		t.Fatal(err)
	}
	a.Proc = p
	t.Cleanup(func() {
		if done, _ := p.Exited(); !done {
			p.Stop(10 * time.Second)
		}
		if t.Failed() {
			t.Logf("---- log of %s (%s) ----\n%s", strings.Join(p.Args, " "), logPath, tailFile(logPath, 12000))
		}
	})
	return a
}

// Stop sends SIGTERM and reports the exit (error nil = status 0).
func (a *Agent) Stop() (exitErr error, took time.Duration, killed bool) {
	return a.Proc.Stop(10 * time.Second)
}

// Get fetches a path from the agent's health server.
func (a *Agent) Get(path string) (int, string, error) {
	hc := &http.Client{Timeout: 2 * time.Second}
	resp, err := hc.Get("http://" + a.HealthAddr + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// WaitReady polls /readyz until 200, failing t after timeout.
func (a *Agent) WaitReady(t testing.TB, timeout time.Duration) time.Duration {
	t.Helper()
	var last string
	ok := Poll(timeout, 50*time.Millisecond, func() bool {
		if done, err := a.Proc.Exited(); done {
			last = fmt.Sprintf("agent exited: %v", err)
			return true
		}
		code, body, err := a.Get("/readyz")
		if err != nil {
			last = err.Error()
			return false
		}
		last = fmt.Sprintf("%d %q", code, body)
		return code == 200
	})
	if done, err := a.Proc.Exited(); done {
		t.Fatalf("agent %s exited before ready: %v", a.Opts.Node, err)
	}
	if !ok {
		t.Fatalf("agent %s: /readyz not 200 within %v (last: %s)", a.Opts.Node, timeout, last)
	}
	return time.Since(a.Started)
}

// Metrics fetches /metrics and parses the Prometheus text format into
// "name{labels}" → value (labels as printed by the agent).
func (a *Agent) Metrics() (map[string]float64, string, error) {
	code, body, err := a.Get("/metrics")
	if err != nil {
		return nil, "", err
	}
	if code != 200 {
		return nil, body, fmt.Errorf("/metrics: HTTP %d", code)
	}
	return ParseMetrics(body), body, nil
}

var metricLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)`)

// ParseMetrics parses Prometheus text exposition.
func ParseMetrics(body string) map[string]float64 {
	m := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || strings.TrimSpace(line) == "" {
			continue
		}
		g := metricLine.FindStringSubmatch(line)
		if g == nil {
			continue
		}
		v, err := strconv.ParseFloat(g[3], 64)
		if err != nil {
			continue
		}
		m[g[1]+g[2]] = v
	}
	return m
}

// MetricSum sums every series of a metric name.
func MetricSum(m map[string]float64, name string) (float64, bool) {
	sum, found := 0.0, false
	for k, v := range m {
		if k == name || strings.HasPrefix(k, name+"{") {
			sum += v
			found = true
		}
	}
	return sum, found
}

// LogLines parses the agent's JSON log lines (non-JSON lines are returned
// separately so a test can complain about them).
func (a *Agent) LogLines() (lines []map[string]any, nonJSON []string) {
	b, err := os.ReadFile(a.Proc.LogPath)
	if err != nil {
		return nil, []string{err.Error()}
	}
	for _, l := range bytes.Split(b, []byte("\n")) {
		if len(bytes.TrimSpace(l)) == 0 {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(l, &m); err != nil {
			nonJSON = append(nonJSON, string(l))
			continue
		}
		lines = append(lines, m)
	}
	return lines, nonJSON
}

// SyncLogs returns the log lines with msg "sync".
func (a *Agent) SyncLogs() []map[string]any {
	lines, _ := a.LogLines()
	var out []map[string]any
	for _, l := range lines {
		if l["msg"] == "sync" {
			out = append(out, l)
		}
	}
	return out
}

// Log returns the whole agent log.
func (a *Agent) Log() string {
	b, _ := os.ReadFile(a.Proc.LogPath)
	return string(b)
}

// Poll calls cond every interval until it returns true or timeout passes.
func Poll(timeout, interval time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(interval)
	}
}
