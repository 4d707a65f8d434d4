package systemd

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/test/harness"
)

// TestAgentRestartsOnlyOnTrustStoreChange runs the real agent binary on the
// host in --source-dir mode against a Debian root booted with systemd-nspawn:
// --host-root is the container's root directory, --systemd-address its
// system bus. A registry-only change must restart nothing; a host-trust
// change must restart containerd.service exactly once; a failing restart
// degrades the node; --restart=never leaves it Pending.
func TestAgentRestartsOnlyOnTrustStoreChange(t *testing.T) {
	harness.SkipUnlessReal(t)
	harness.SkipUnlessRoot(t, "tar --same-owner, systemd-nspawn")
	for _, bin := range []string{"systemd-nspawn", "journalctl"} {
		_, err := exec.LookPath(bin)
		require.NoError(t, err, "%s missing: run test/scripts/deps.sh (systemd-container)", bin)
	}
	harness.Binary(t) // build before anything is timed

	root := harness.DebianRoot(t)
	writeFile(t, root, "etc/systemd/system/containerd.service", containerdUnit)
	writeFile(t, root, "etc/systemd/system/broken.service", brokenUnit)
	enable(t, root, "containerd.service")
	enable(t, root, "broken.service")
	// Docker "present": registry files go to etc/docker/certs.d (no
	// etc/containerd, whose missing config_path would degrade the node).
	require.NoError(t, os.MkdirAll(filepath.Join(root, "etc/docker"), 0o755))
	c := boot(t, root)

	src := filepath.Join(t.TempDir(), "sources")
	require.NoError(t, os.Mkdir(src, 0o755))
	ca1, ca2, ca3 := harness.NewCA("nodetrust restart test CA 1"), harness.NewCA("nodetrust restart test CA 2"),
		harness.NewCA("nodetrust restart test CA 3")
	const (
		unit     = "containerd.service"
		reg1     = "registry-1.example:5000"
		reg2     = "registry-2.example"
		manifest = "registry-ca.yaml"
		anchors  = "usr/local/share/ca-certificates"
	)
	spansSince := func(u string, since time.Time) []restartSpan {
		return restartSpans(c.unitEvents(t, u), since)
	}
	type timing struct{ step, what string }
	var timings []timing
	defer func() {
		var b strings.Builder
		for _, tm := range timings {
			fmt.Fprintf(&b, "\n  %-34s %s", tm.step, tm.what)
		}
		t.Logf("timings:%s", b.String())
	}()

	// step runs a subtest; the later ones build on it, so a failure ends the test.
	step := func(name string, f func(t *testing.T)) {
		t.Helper()
		if !t.Run(name, f) {
			t.FailNow()
		}
	}

	pid0 := c.mainPID(t, unit)
	require.NotZero(t, pid0)
	a := startDirAgent(t, c, src)
	_, nSync := waitLog(t, a, "sync", 0, 30*time.Second, func(l map[string]any) bool { return true })
	require.Equal(t, "Ready", logsWith(a, "sync")[0]["state"], "first sync of an empty directory")

	step("a registry-only source restarts nothing", func(t *testing.T) {
		t0 := writeManifest(t, src, manifest, configMapManifest("registry-ca", reg1, false, ca1.PEM))
		l, n := waitLog(t, a, "sync", nSync, 30*time.Second, func(l map[string]any) bool { return num(l, "written") > 0 })
		nSync = n
		timings = append(timings, timing{"(a) registry-only: files written", time.Since(t0).Round(time.Millisecond).String()})
		require.Equal(t, "Ready", l["state"], "sync line: %v", l)
		require.Len(t, filesHolding(t, root, "etc/docker/certs.d/"+reg1, derOf(ca1.PEM)), 1, "CA file for %s", reg1)
		require.Empty(t, filesHolding(t, root, anchors, derOf(ca1.PEM)), "no host trust asked for")
		time.Sleep(time.Second) // room for a wrong restart to show
		require.Equal(t, pid0, c.mainPID(t, unit), "containerd restarted after a registry-only change")
		require.Empty(t, spansSince(unit, t0), "systemd logged a restart of %s", unit)
		require.Empty(t, logsWith(a, "restarted"))
		require.Zero(t, restartsMetric(t, a))
	})

	pid1 := pid0
	step("host trust restarts containerd once", func(t *testing.T) {
		t0 := writeManifest(t, src, manifest, configMapManifest("registry-ca", reg1, true, ca1.PEM))
		newPID, seen := c.waitMainPIDChange(t, unit, pid0, 60*time.Second)
		pid1 = newPID
		took := seen.Sub(t0)
		r, _ := waitLog(t, a, "restarted", 0, 10*time.Second, func(l map[string]any) bool { return true })
		require.Equal(t, unit, r["unit"])
		require.EqualValues(t, pid0, num(r, "oldPID"))
		require.EqualValues(t, newPID, num(r, "newPID"))
		l, n := waitLog(t, a, "sync", nSync, 10*time.Second, func(l map[string]any) bool { return num(l, "written") > 0 })
		nSync = n
		require.Equal(t, "Ready", l["state"], "the sync that restarted: %v", l)
		require.Empty(t, l["message"])

		require.Len(t, filesHolding(t, root, anchors, derOf(ca1.PEM)), 1, "anchor in %s", anchors)
		require.True(t, bundleHolds(t, root, derOf(ca1.PEM)), "CA 1 in etc/ssl/certs/ca-certificates.crt")
		require.Equal(t, 1.0, restartsMetric(t, a))
		require.False(t, restartPendingRecorded(t, root))
		spans := spansSince(unit, t0)
		require.Len(t, spans, 1, "systemd logged exactly one restart")
		require.False(t, spans[0].Failed)
		require.Eventually(t, func() bool { return c.cmdline(newPID) == "sleep infinity" }, 5*time.Second, 20*time.Millisecond)
		active, sub, err := c.unitState(t.Context(), unit)
		require.NoError(t, err)
		require.Equal(t, "active/running", active+"/"+sub)
		timings = append(timings,
			timing{"(b) host trust: write → new MainPID", took.Round(time.Millisecond).String()},
			timing{"    write → systemd \"Stopping\"", spans[0].Stopping.Sub(t0).Round(time.Millisecond).String() + " (sync, update-ca-certificates --fresh)"},
			timing{"    \"Stopping\" → \"Started\"", spans[0].Duration().Round(time.Millisecond).String()},
			timing{"    agent's restart duration", (time.Duration(num(r, "duration")) * time.Nanosecond).Round(time.Millisecond).String()},
			timing{"    sync duration (whole)", (time.Duration(num(l, "duration")) * time.Nanosecond).Round(time.Millisecond).String()})
		t.Logf("containerd.service restarted: MainPID %d → %d, %s from the manifest write to the new MainPID", pid0, newPID, took.Round(time.Millisecond))
	})

	step("another registry-only edit restarts nothing", func(t *testing.T) {
		t0 := writeManifest(t, src, manifest, configMapManifest("registry-ca", reg1+","+reg2, true, ca1.PEM))
		l, n := waitLog(t, a, "sync", nSync, 30*time.Second, func(l map[string]any) bool { return num(l, "written") > 0 })
		nSync = n
		timings = append(timings, timing{"(c) registry edit: files written", time.Since(t0).Round(time.Millisecond).String()})
		require.Equal(t, "Ready", l["state"], "sync line: %v", l)
		require.Len(t, filesHolding(t, root, "etc/docker/certs.d/"+reg2, derOf(ca1.PEM)), 1, "CA file for %s", reg2)
		time.Sleep(time.Second)
		require.Equal(t, pid1, c.mainPID(t, unit), "containerd restarted after a registry-only change")
		require.Empty(t, spansSince(unit, t0), "systemd logged a restart of %s", unit)
		require.Len(t, logsWith(a, "restarted"), 1)
		require.Equal(t, 1.0, restartsMetric(t, a))
	})
	stopAgent(t, a)

	step("a failing restart degrades the node", func(t *testing.T) {
		writeFile(t, root, breakFile, "")
		// Debug: its "drift" lines name the file events that trigger syncs.
		a := startDirAgent(t, c, src, "--restart-units", "broken.service", "--log-level", "debug")
		l, n := waitLog(t, a, "sync", 0, 30*time.Second, func(l map[string]any) bool { return true })
		require.Equal(t, "Ready", l["state"], "nothing changed since the last agent: %v", l)
		brokenPID := c.mainPID(t, "broken.service")
		require.NotZero(t, brokenPID)

		t0 := writeManifest(t, src, manifest, configMapManifest("registry-ca", reg1+","+reg2, true, ca1.PEM, ca2.PEM))
		l, n = waitLog(t, a, "sync", n, 60*time.Second, func(l map[string]any) bool { return num(l, "written") > 0 })
		took := time.Since(t0)
		require.Equal(t, "Degraded", l["state"], "sync line: %v", l)
		msg, _ := l["message"].(string)
		require.Contains(t, msg, `job result "failed"`)
		require.Contains(t, msg, "restart broken.service")
		t.Logf("Degraded after %s: %s", took.Round(time.Millisecond), msg)
		timings = append(timings, timing{"(d) failing unit: write → Degraded", took.Round(time.Millisecond).String()})
		require.Len(t, filesHolding(t, root, anchors, derOf(ca2.PEM)), 1, "anchor of CA 2")
		require.True(t, bundleHolds(t, root, derOf(ca2.PEM)))
		// Let the agent settle: no new sync line and broken.service neither
		// starting nor stopping for 1.5 s. The sync that failed may be
		// followed by one that its own file writes triggered (drift watch);
		// that one owes the restart too and tries it again.
		settle(t, a, c, "broken.service", 30*time.Second)
		active, _, err := c.unitState(t.Context(), "broken.service")
		require.NoError(t, err)
		require.Equal(t, "failed", active)
		spans := spansSince("broken.service", t0)
		require.NotEmpty(t, spans)
		for _, sp := range spans {
			require.True(t, sp.Failed, "systemd logged broken.service failing")
		}
		after := logsWith(a, "sync")[n-1:]
		var lines []string
		for _, l := range after {
			require.Equal(t, "Degraded", l["state"], "sync line: %v", l)
			require.Contains(t, l["message"], `job result "failed"`)
			lines = append(lines, fmt.Sprintf("%s written=%v %q", l["time"], l["written"], l["message"]))
		}
		var drift []string
		for _, l := range logsWith(a, "drift") {
			if tm, err := time.Parse(time.RFC3339Nano, fmt.Sprint(l["time"])); err == nil && tm.After(t0) {
				drift = append(drift, fmt.Sprintf("%s %v %v", l["time"], l["op"], strings.TrimPrefix(fmt.Sprint(l["path"]), root)))
			}
		}
		t.Logf("one host-trust change with a failing unit: %d failed restart job(s) in the journal, %d sync line(s):\n  %s\nfile events (drift) that requested syncs meanwhile:\n  %s",
			len(spans), len(after), strings.Join(lines, "\n  "), strings.Join(drift, "\n  "))
		require.Len(t, spans, 1, "one restart attempt per backoff period, however many syncs follow (a failing unit must not run into systemd's start limit)")
		timings = append(timings, timing{"(d) failed restart jobs per change", fmt.Sprint(len(spans))})
		n = len(logsWith(a, "sync"))
		require.Equal(t, pid1, c.mainPID(t, unit), "containerd is not in --restart-units")
		require.Empty(t, logsWith(a, "restarted"))
		require.Zero(t, restartsMetric(t, a))
		require.True(t, restartPendingRecorded(t, root), "the restart is still owed")

		// Fixed unit: the next sync (any event; here the manifest rewritten
		// unchanged) restarts it and the node is Ready again.
		require.NoError(t, os.Remove(filepath.Join(root, breakFile)))
		t1 := writeManifest(t, src, manifest, configMapManifest("registry-ca", reg1+","+reg2, true, ca1.PEM, ca2.PEM))
		r, _ := waitLog(t, a, "restarted", 0, 30*time.Second, func(l map[string]any) bool { return true })
		require.Equal(t, "broken.service", r["unit"])
		l, _ = waitLog(t, a, "sync", n, 10*time.Second, func(l map[string]any) bool { return l["state"] == "Ready" })
		timings = append(timings, timing{"(d) unit fixed: rewrite → Ready", time.Since(t1).Round(time.Millisecond).String()})
		require.Empty(t, l["message"])
		require.False(t, restartPendingRecorded(t, root))
		require.Equal(t, 1.0, restartsMetric(t, a))
		require.Equal(t, pid1, c.mainPID(t, unit))
		stopAgent(t, a)
	})

	step("restart=never reports restart pending", func(t *testing.T) {
		a := startDirAgent(t, c, src, "--restart=never")
		l, n := waitLog(t, a, "sync", 0, 30*time.Second, func(l map[string]any) bool { return true })
		require.Equal(t, "Ready", l["state"], "no restart owed: %v", l)
		brokenPID := c.mainPID(t, "broken.service")

		t0 := writeManifest(t, src, manifest, configMapManifest("registry-ca", reg1+","+reg2, true, ca1.PEM, ca2.PEM, ca3.PEM))
		l, _ = waitLog(t, a, "sync", n, 60*time.Second, func(l map[string]any) bool { return num(l, "written") > 0 })
		took := time.Since(t0)
		require.Equal(t, "Pending", l["state"], "sync line: %v", l)
		msg, _ := l["message"].(string)
		require.Contains(t, msg, "restart pending")
		t.Logf("Pending after %s: %s", took.Round(time.Millisecond), msg)
		timings = append(timings, timing{"(e) restart=never: write → Pending", took.Round(time.Millisecond).String()})
		require.True(t, bundleHolds(t, root, derOf(ca3.PEM)))
		time.Sleep(time.Second)
		require.Equal(t, pid1, c.mainPID(t, unit), "--restart=never restarted containerd")
		require.Equal(t, brokenPID, c.mainPID(t, "broken.service"))
		require.Empty(t, spansSince(unit, t0))
		require.Empty(t, spansSince("broken.service", t0))
		require.Empty(t, logsWith(a, "restarted"))
		require.Zero(t, restartsMetric(t, a))
		require.True(t, restartPendingRecorded(t, root))

		// The operator restarts containerd by hand: the next sync (the
		// manifest rewritten unchanged) sees that its process started after
		// the change and the node is Ready, with no restart of its own.
		ch := make(chan string, 1)
		_, err := c.conn.RestartUnitContext(t.Context(), unit, "replace", ch)
		require.NoError(t, err)
		require.Equal(t, "done", <-ch)
		// Only a sync line logged after the rewrite counts: the lines so far
		// include this agent's first syncs, which were Ready too. The sync
		// line comes after ClearRestarts; "restarted since the change" comes
		// before it, so the record is read only after the former.
		n = len(logsWith(a, "sync"))
		t1 := writeManifest(t, src, manifest, configMapManifest("registry-ca", reg1+","+reg2, true, ca1.PEM, ca2.PEM, ca3.PEM))
		l, _ = waitLog(t, a, "sync", n, 30*time.Second, func(l map[string]any) bool { return l["state"] == "Ready" })
		require.Empty(t, l["message"])
		r, _ := waitLog(t, a, "restarted since the change: no restart needed", 0, time.Second, func(map[string]any) bool { return true })
		require.Equal(t, unit, r["unit"])
		timings = append(timings, timing{"(f) restarted by hand: rewrite → Ready", time.Since(t1).Round(time.Millisecond).String()})
		require.False(t, restartPendingRecorded(t, root))
		require.Empty(t, logsWith(a, "restarted"))
		require.Zero(t, restartsMetric(t, a))
		stopAgent(t, a)
	})
}
