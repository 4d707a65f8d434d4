package systemd

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/test/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

// Units of the agent tests.
const (
	// containerdStandIn is containerd.service as in systemd_test.go, but
	// taking startPre to start (ExecStartPre), like a runtime that loads its
	// state, so that restarts on several nodes last long enough to overlap
	// if nothing kept them apart.
	containerdStandIn = `[Unit]
Description=Stand-in for containerd (nodetrust agent restart test)

[Service]
Type=simple
ExecStartPre=/bin/sleep %s
ExecStart=/bin/sh -c 'exec sleep infinity'

[Install]
WantedBy=multi-user.target
`
)

// containerdUnitWithStartPre returns the containerd stand-in whose start
// takes startPre (a sleep(1) argument such as "1" or "0.2").
func containerdUnitWithStartPre(startPre string) string {
	return fmt.Sprintf(containerdStandIn, startPre)
}

// ------------------------------------------------------------ systemd side

// mainPID reads a service's MainPID over the container's bus.
func (c *container) mainPID(t testing.TB, unit string) uint32 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p, err := c.conn.GetServicePropertyContext(ctx, unit, "MainPID")
	require.NoError(t, err, "MainPID of %s", unit)
	return p.Value.Value().(uint32)
}

// unitState reads a unit's ActiveState and SubState.
func (c *container) unitState(ctx context.Context, unit string) (active, sub string, err error) {
	st, err := c.conn.ListUnitsByNamesContext(ctx, []string{unit})
	if err != nil {
		return "", "", err
	}
	if len(st) != 1 {
		return "", "", fmt.Errorf("%d statuses for %s", len(st), unit)
	}
	return st[0].ActiveState, st[0].SubState, nil
}

// waitMainPIDChange polls MainPID every 10 ms until it differs from old
// and is not 0, and returns it with the time it was first seen.
func (c *container) waitMainPIDChange(t testing.TB, unit string, old uint32, timeout time.Duration) (uint32, time.Time) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if pid := c.mainPID(t, unit); pid != old && pid != 0 {
			return pid, time.Now()
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: MainPID still %d after %s", unit, old, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Message IDs of systemd's manager messages about units (sd-messages.h).
const (
	msgUnitStarting = "7d4958e842da4a758f6c1cdc7b36dcc5"
	msgUnitStarted  = "39f53479d3a045ac8e11786248231fbf"
	msgUnitStopping = "de5b426a63be47a7b6ac3eaac82e2f6f"
	msgUnitStopped  = "9d1aaa27d60140bd96365438aad20286"
	msgUnitFailed   = "be02cf6855d2428ba40df7e9d022f03d"
)

// unitEvent is one of systemd's messages about a unit in the container's
// journal.
type unitEvent struct {
	At      time.Time // __REALTIME_TIMESTAMP (the container shares the host's clock)
	ID      string    // MESSAGE_ID
	Message string
}

// unitEvents reads the manager's messages about unit from the container's
// journal (journalctl of the host, --root at the running container's root,
// so both /var/log/journal and /run/log/journal are read).
func (c *container) unitEvents(t testing.TB, unit string) []unitEvent {
	t.Helper()
	out, err := exec.Command("journalctl", "--root", c.Inside("/"), "--no-pager", "-o", "json",
		"UNIT="+unit, "_PID=1").Output()
	require.NoError(t, err, "journalctl in container %s", c.Root)
	var evs []unitEvent
	for _, line := range bytes.Split(out, []byte("\n")) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			continue // MESSAGE as a byte array: not one of ours
		}
		us, err := strconv.ParseInt(fmt.Sprint(m["__REALTIME_TIMESTAMP"]), 10, 64)
		if err != nil {
			continue
		}
		id, _ := m["MESSAGE_ID"].(string)
		msg, _ := m["MESSAGE"].(string)
		evs = append(evs, unitEvent{At: time.UnixMicro(us), ID: id, Message: msg})
	}
	sort.SliceStable(evs, func(i, j int) bool { return evs[i].At.Before(evs[j].At) })
	return evs
}

// restartSpan is one restart of a unit as systemd logged it: from "Stopping"
// (or "Starting", when nothing was running) to "Started" (or "Failed").
type restartSpan struct {
	Stopping, Done time.Time
	Failed         bool
}

// Duration of the restart.
func (s restartSpan) Duration() time.Duration { return s.Done.Sub(s.Stopping) }

// restartSpans pairs each "Stopping" after since (or "Starting" outside a
// restart) with the next "Started" or "Failed"; an unfinished restart has a
// zero Done.
func restartSpans(evs []unitEvent, since time.Time) []restartSpan {
	var spans []restartSpan
	var cur *restartSpan
	for _, e := range evs {
		if e.At.Before(since) {
			continue
		}
		switch e.ID {
		case msgUnitStopping:
			spans = append(spans, restartSpan{Stopping: e.At})
			cur = &spans[len(spans)-1]
		case msgUnitStarting:
			// A restart of a unit that is not running (failed, inactive)
			// has nothing to stop: it begins with "Starting".
			if cur == nil {
				spans = append(spans, restartSpan{Stopping: e.At})
				cur = &spans[len(spans)-1]
			}
		case msgUnitStarted, msgUnitFailed:
			if cur != nil && cur.Done.IsZero() {
				cur.Done, cur.Failed = e.At, e.ID == msgUnitFailed
				cur = nil
			}
		}
	}
	return spans
}

// -------------------------------------------------------------- agent side

// startDirAgent runs `nodetrust agent --source-dir dir` on the host against
// the container's root and bus. It is stopped on cleanup; its log is printed
// when the test failed.
func startDirAgent(t *testing.T, c *container, dir string, extra ...string) *harness.Agent {
	t.Helper()
	bin := harness.Binary(t)
	port, err := harness.FreePort()
	require.NoError(t, err)
	a := &harness.Agent{HealthAddr: fmt.Sprintf("127.0.0.1:%d", port)}
	args := append([]string{"agent",
		"--source-dir", dir,
		"--host-root", c.Root,
		"--systemd-address", c.address,
		"--health-addr", a.HealthAddr,
		"--resync", "1h",
	}, extra...)
	logPath := filepath.Join(t.TempDir(), "agent.log")
	a.Started = time.Now()
	a.Proc, err = harness.StartProc("nodetrust agent", logPath, bin, args...)
	require.NoError(t, err)
	t.Logf("started %s", strings.Join(a.Proc.Args, " "))
	t.Cleanup(func() {
		if done, _ := a.Proc.Exited(); !done {
			a.Proc.Stop(10 * time.Second)
		}
		if t.Failed() {
			t.Logf("---- log of %s ----\n%s", strings.Join(a.Proc.Args, " "), a.Log())
		}
	})
	return a
}

// stopAgent stops an agent and requires a clean exit.
func stopAgent(t *testing.T, a *harness.Agent) {
	t.Helper()
	err, took, killed := a.Stop()
	require.False(t, killed, "agent had to be killed")
	require.NoError(t, err, "agent exit")
	t.Logf("agent stopped in %s", took.Round(time.Millisecond))
}

// logsWith returns the agent's log lines whose msg is msg.
func logsWith(a *harness.Agent, msg string) []map[string]any {
	lines, _ := a.LogLines()
	var out []map[string]any
	for _, l := range lines {
		if l["msg"] == msg {
			out = append(out, l)
		}
	}
	return out
}

// waitLog waits until the agent logged a line with msg, past the first skip
// such lines, for which match holds; it returns the line and how many lines
// with msg there were up to it.
func waitLog(t testing.TB, a *harness.Agent, msg string, skip int, timeout time.Duration, match func(map[string]any) bool) (map[string]any, int) {
	t.Helper()
	var got map[string]any
	n := 0
	ok := harness.Poll(timeout, 20*time.Millisecond, func() bool {
		lines := logsWith(a, msg)
		for i := skip; i < len(lines); i++ {
			if match(lines[i]) {
				got, n = lines[i], i+1
				return true
			}
		}
		if done, _ := a.Proc.Exited(); done {
			return true
		}
		return false
	})
	if done, err := a.Proc.Exited(); done && got == nil {
		t.Fatalf("agent exited (%v) before logging the expected %q line\n%s", err, msg, a.Log())
	}
	if !ok || got == nil {
		t.Fatalf("no matching %q line after %s (%d such lines before)\n%s", msg, timeout, skip, a.Log())
	}
	return got, n
}

// settle waits until the agent logged no sync line and unit was neither
// activating nor deactivating for 1.5 s.
func settle(t testing.TB, a *harness.Agent, c *container, unit string, timeout time.Duration) {
	t.Helper()
	const quiet = 1500 * time.Millisecond
	deadline := time.Now().Add(timeout)
	lines, since := len(logsWith(a, "sync")), time.Now()
	for time.Since(since) < quiet {
		if time.Now().After(deadline) {
			t.Fatalf("agent or %s not settled after %s", unit, timeout)
		}
		time.Sleep(50 * time.Millisecond)
		active, _, err := c.unitState(context.Background(), unit)
		require.NoError(t, err)
		if n := len(logsWith(a, "sync")); n != lines || active == "activating" || active == "deactivating" {
			lines, since = n, time.Now()
		}
	}
}

// num reads a JSON number of a log line.
func num(l map[string]any, key string) float64 {
	f, _ := l[key].(float64)
	return f
}

// restartsMetric reads nodetrust_runtime_restarts_total.
func restartsMetric(t testing.TB, a *harness.Agent) float64 {
	t.Helper()
	m, body, err := a.Metrics()
	require.NoError(t, err)
	v, ok := harness.MetricSum(m, "nodetrust_runtime_restarts_total")
	require.True(t, ok, "nodetrust_runtime_restarts_total missing from /metrics:\n%s", body)
	return v
}

// ---------------------------------------------------------------- sources

// configMapManifest is a labelled ConfigMap with one key per PEM, for
// registries (comma-separated), with host trust or not.
func configMapManifest(name, registries string, hostTrust bool, pems ...[]byte) string {
	var b strings.Builder
	fmt.Fprintf(&b, `apiVersion: v1
kind: ConfigMap
metadata:
  name: %s
  namespace: default
  labels:
    nodetrust.io/ca: "true"
  annotations:
    nodetrust.io/registries: %q
    nodetrust.io/host-trust: "%t"
data:
`, name, registries, hostTrust)
	for i, p := range pems {
		fmt.Fprintf(&b, "  ca%d.crt: |\n", i)
		for _, l := range strings.Split(strings.TrimSpace(string(p)), "\n") {
			b.WriteString("    " + l + "\n")
		}
	}
	return b.String()
}

// writeManifest replaces dir/name atomically (written next to dir, renamed
// in), so the agent never reads half a file. It returns when the rename
// happened.
func writeManifest(t testing.TB, dir, name, content string) time.Time {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(dir), "."+name+".tmp")
	require.NoError(t, os.WriteFile(tmp, []byte(content), 0o644))
	at := time.Now()
	require.NoError(t, os.Rename(tmp, filepath.Join(dir, name)))
	return at
}

// derOf returns the DER of the first CERTIFICATE in pemData.
func derOf(pemData []byte) []byte {
	b, _ := pem.Decode(pemData)
	return b.Bytes
}

// pemHolds reports whether PEM data holds a certificate equal to der.
func pemHolds(data, der []byte) bool {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return false
		}
		if b.Type == "CERTIFICATE" && bytes.Equal(b.Bytes, der) {
			return true
		}
	}
}

// filesHolding lists the files directly in root/dir whose PEM holds der.
func filesHolding(t testing.TB, root, dir string, der []byte) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(root, dir))
	if os.IsNotExist(err) {
		return nil
	}
	require.NoError(t, err)
	var out []string
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		data, err := os.ReadFile(filepath.Join(root, dir, e.Name()))
		require.NoError(t, err)
		if pemHolds(data, der) {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	return out
}

// bundleHolds reports whether the Debian CA bundle in root holds der.
func bundleHolds(t testing.TB, root string, der []byte) bool {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, "etc/ssl/certs/ca-certificates.crt"))
	require.NoError(t, err)
	return pemHolds(data, der)
}

// restartPendingRecorded reads restartPending from the ownership record.
func restartPendingRecorded(t testing.TB, root string) bool {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, "var/lib/nodetrust/state.json"))
	require.NoError(t, err)
	var st struct {
		RestartPending bool `json:"restartPending"`
	}
	require.NoError(t, json.Unmarshal(data, &st))
	return st.RestartPending
}
