package agent_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/pkg/agent"
	"github.com/nodetrust/nodetrust/pkg/annotation"
	"github.com/nodetrust/nodetrust/pkg/hostfs/hostfstest"
	"github.com/nodetrust/nodetrust/pkg/restart"
	"github.com/nodetrust/nodetrust/pkg/systemd"
	"github.com/nodetrust/nodetrust/pkg/systemd/systemdtest"
	"github.com/nodetrust/nodetrust/pkg/truststore"
)

const containerdConfig = "etc/containerd/config.toml"

func runtimes() map[string]systemdtest.Unit {
	return map[string]systemdtest.Unit{
		"containerd.service": {MainPID: 100},
		"docker.service":     {MainPID: 200},
	}
}

// managedNode is a node with containerd and docker loaded, a containerd
// config that reads no hosts.toml, and --manage-containerd-config.
func managedNode(r restart.Options) nodeSetup {
	return nodeSetup{
		units:    runtimes(),
		restarts: r,
		dirs:     []string{"etc/containerd"},
		files:    map[string]string{containerdConfig: "version = 2\n"},
		manage:   true,
	}
}

func TestConfigEditRestartsContainerdOnly(t *testing.T) {
	e := startNode(t, managedNode(restart.Options{Units: restart.DefaultUnits}))
	e.source("registry-only", false)
	require.Eventually(t, func() bool { return len(e.unit.Restarts()) == 1 }, 5*time.Second, 10*time.Millisecond)
	require.Equal(t, []string{"containerd.service"}, e.unit.Restarts(), "a config change restarts containerd, not docker")
	st := e.waitState(annotation.StateReady)
	require.Empty(t, st.Message, "containerd now reads hosts.toml")
	data, err := os.ReadFile(filepath.Join(e.dir, containerdConfig))
	require.NoError(t, err)
	require.Contains(t, string(data), `config_path = "/etc/containerd/certs.d"`)

	e.source("another", false)
	require.Eventually(t, func() bool { return e.status.get().Sources == 2 }, 5*time.Second, 10*time.Millisecond)
	e.agent.Trigger()
	time.Sleep(100 * time.Millisecond)
	require.Len(t, e.unit.Restarts(), 1, "hosts.toml changes restart nothing")

	e.source("corp", true)
	require.Eventually(t, func() bool { return len(e.unit.Restarts()) == 3 }, 5*time.Second, 10*time.Millisecond)
	require.Equal(t, []string{"containerd.service", "containerd.service", "docker.service"}, e.unit.Restarts(),
		"a trust store change restarts every loaded runtime")
}

func TestConfigEditWithRestartsOff(t *testing.T) {
	e := startNode(t, managedNode(restart.Options{Never: true}))
	e.source("registry-only", false)
	st := e.waitState(annotation.StatePending)
	require.Equal(t, "restart pending: the config of containerd.service changed; restart it to load it (restarts are off)", st.Message)
	require.Empty(t, e.unit.Restarts())
}

func TestConfigWithoutManageIsDegraded(t *testing.T) {
	e := startNode(t, nodeSetup{
		units: runtimes(),
		dirs:  []string{"etc/containerd"},
		files: map[string]string{containerdConfig: "version = 2\n"},
	})
	e.source("registry-only", false)
	st := e.waitState(annotation.StateDegraded)
	require.Contains(t, st.Message, "containerd reads no hosts.toml: config_path is unset")
	require.Empty(t, e.unit.Restarts())
	data, err := os.ReadFile(filepath.Join(e.dir, containerdConfig))
	require.NoError(t, err)
	require.Equal(t, "version = 2\n", string(data))
}

// unpublishLog records Unpublish calls besides statuses.
type unpublishLog struct {
	statusLog
	unpublished int
}

func (u *unpublishLog) Unpublish(context.Context) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.unpublished++
	return nil
}

func TestUninstall(t *testing.T) {
	n := managedNode(restart.Options{Units: restart.DefaultUnits})
	n.dirs = append(n.dirs, "var/lib") // /var/lib exists on every host
	n.files["etc/docker/daemon.json"] = "{}\n"
	e := startNode(t, n)
	before := hostfstest.Tree(t, e.dir, "")
	e.source("registry-only", false)
	require.Eventually(t, func() bool { return len(e.unit.Restarts()) == 1 }, 5*time.Second, 10*time.Millisecond)
	e.source("corp", true)
	require.Eventually(t, func() bool { return len(e.unit.Restarts()) == 3 }, 5*time.Second, 10*time.Millisecond)
	require.NotEqual(t, before[containerdConfig], hostfstest.Tree(t, e.dir, "var")[containerdConfig])
	e.stop()

	// The agent stopped (the DaemonSet rolled to --uninstall): another one
	// on the same root uninstalls.
	pub := &unpublishLog{}
	u := agent.New(agent.Options{Root: e.root, Publisher: pub, Retry: 20 * time.Millisecond,
		Restarts: &restart.Options{Units: restart.DefaultUnits,
			Systemd: func(context.Context) (systemd.Conn, error) { return e.unit, nil }},
		Refresh: func(context.Context, truststore.Store, string) error { return nil },
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil))})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- u.Uninstall(ctx) }()
	require.Eventually(t, u.Ready, 5*time.Second, 10*time.Millisecond)
	cancel()
	require.NoError(t, <-done)

	require.Equal(t, before, hostfstest.Tree(t, e.dir, ""),
		"every file and directory nodetrust wrote is gone, the config is the original, the record too")
	require.Equal(t, 1, pub.unpublished, "the Node's annotations are removed")
	require.Equal(t, []string{"containerd.service", "containerd.service", "docker.service", "containerd.service", "docker.service"},
		e.unit.Restarts(), "the removed host-trust anchor restarts the runtimes once; restoring the config restarts nothing")
}

// With --restart=never, a runtime restarted by someone else after the
// change ends "restart pending"; the agent restarts nothing itself.
func TestRestartByHandIsSeen(t *testing.T) {
	e := startNode(t, managedNode(restart.Options{Never: true}))
	e.source("registry-only", false)
	e.waitState(annotation.StatePending)

	e.unit.Set("containerd.service", systemdtest.Unit{MainPID: 101, StartedAt: time.Now()})
	e.agent.Trigger()
	st := e.waitState(annotation.StateReady)
	require.Empty(t, st.Message)
	require.Empty(t, e.unit.Restarts())
	_, err := os.Stat(filepath.Join(e.dir, "var/lib/nodetrust/state.json"))
	require.NoError(t, err)
	stRec, err := e.root.LoadState()
	require.NoError(t, err)
	require.Empty(t, stRec.Units, "cleared")
	require.True(t, stRec.Since.IsZero())
}

// A restart owed from before (the record says so) is skipped for units
// that started since, as after a reboot; the others are restarted.
func TestRestartSkipsUnitsStartedSinceTheChange(t *testing.T) {
	since := time.Now().Add(-time.Minute).UTC()
	units := runtimes()
	units["containerd.service"] = systemdtest.Unit{MainPID: 100, StartedAt: time.Now()}          // after the change
	units["docker.service"] = systemdtest.Unit{MainPID: 200, StartedAt: since.Add(-time.Second)} // before it
	e := startNode(t, nodeSetup{
		units:    units,
		restarts: restart.Options{Units: restart.DefaultUnits},
		files: map[string]string{"var/lib/nodetrust/state.json": `{"version": 1, "restartPending": true, "restartSince": "` +
			since.Format(time.RFC3339Nano) + `"}`},
	})
	require.Eventually(t, func() bool { return len(e.unit.Restarts()) == 1 }, 5*time.Second, 10*time.Millisecond)
	require.Equal(t, []string{"docker.service"}, e.unit.Restarts())
	e.waitState(annotation.StateReady)
}
