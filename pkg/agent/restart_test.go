package agent_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodetrust/nodetrust/pkg/agent"
	"github.com/nodetrust/nodetrust/pkg/annotation"
	"github.com/nodetrust/nodetrust/pkg/certs/certstest"
	"github.com/nodetrust/nodetrust/pkg/hostfs"
	"github.com/nodetrust/nodetrust/pkg/hostfs/hostfstest"
	"github.com/nodetrust/nodetrust/pkg/lease"
	"github.com/nodetrust/nodetrust/pkg/lease/leasetest"
	"github.com/nodetrust/nodetrust/pkg/reconcile"
	"github.com/nodetrust/nodetrust/pkg/restart"
	"github.com/nodetrust/nodetrust/pkg/systemd"
	"github.com/nodetrust/nodetrust/pkg/systemd/systemdtest"
	"github.com/nodetrust/nodetrust/pkg/truststore"
)

// statusLog records what the agent would publish.
type statusLog struct {
	mu   sync.Mutex
	last annotation.Status
}

func (s *statusLog) Publish(_ context.Context, st annotation.Status, _ reconcile.Report) (agent.Published, error) {
	s.mu.Lock()
	s.last = st
	s.mu.Unlock()
	return agent.Published{}, nil
}

func (s *statusLog) get() annotation.Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

type restartEnv struct {
	t      *testing.T
	dir    string // the host root
	root   *hostfs.Root
	stop   func() // stops the agent
	src    string
	status *statusLog
	unit   *systemdtest.Conn
	agent  *agent.Agent
}

// startRestarts runs an agent on a Debian-like root whose trust store
// refresh is faked, reading sources from a directory.
func startRestarts(t *testing.T, unit systemdtest.Unit, r restart.Options) *restartEnv {
	return startNode(t, nodeSetup{units: map[string]systemdtest.Unit{"containerd.service": unit}, restarts: r})
}

// nodeSetup describes the node an agent under test runs on.
type nodeSetup struct {
	units    map[string]systemdtest.Unit // loaded systemd units
	restarts restart.Options
	dirs     []string          // besides etc/docker and the anchor dir
	files    map[string]string // relative to the host root
	manage   bool              // --manage-containerd-config
}

func startNode(t *testing.T, n nodeSetup) *restartEnv {
	e := &restartEnv{t: t, src: t.TempDir(), status: &statusLog{}}
	e.dir = t.TempDir()
	hostfstest.MkdirAll(t, e.dir, append([]string{"etc/docker", "usr/local/share/ca-certificates"}, n.dirs...)...)
	hostfstest.WriteFile(t, e.dir, "etc/os-release", "ID=debian\n")
	for p, data := range n.files {
		hostfstest.WriteFile(t, e.dir, p, data)
	}
	root, err := hostfs.Open(e.dir)
	require.NoError(t, err)
	t.Cleanup(func() { root.Close() })
	e.root = root
	e.unit = systemdtest.New(n.units)
	r := n.restarts
	if r.Units == nil {
		r.Units = []string{"containerd.service", "crio.service"}
	}
	r.Systemd = func(context.Context) (systemd.Conn, error) { return e.unit, nil }
	inputs := agent.NewDir(e.src, nil)
	inputs.Settle = 20 * time.Millisecond // the tests write whole files at once
	e.agent = agent.New(agent.Options{Root: root, Inputs: inputs, Publisher: e.status,
		Resync: time.Hour, Retry: 20 * time.Millisecond, Restarts: &r, ManageContainerdConfig: n.manage,
		Refresh: func(context.Context, truststore.Store, string) error { return nil },
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil))})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.agent.Run(ctx) }()
	var once sync.Once
	e.stop = func() { once.Do(func() { cancel(); require.NoError(t, <-done) }) }
	t.Cleanup(e.stop)
	require.Eventually(t, e.agent.Ready, 5*time.Second, 10*time.Millisecond)
	return e
}

// source writes a manifest; hostTrust decides whether it changes the trust store.
func (e *restartEnv) source(name string, hostTrust bool) {
	ca := certstest.NewCA(e.t, name)
	doc := fmt.Sprintf("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: %s, namespace: ns, labels: {nodetrust.io/ca: \"true\"}, annotations: {nodetrust.io/registries: r.example, nodetrust.io/host-trust: %q}}\ndata: {ca.crt: %q}\n",
		name, fmt.Sprint(hostTrust), string(ca.CertPEM()))
	require.NoError(e.t, os.WriteFile(filepath.Join(e.src, name+".yaml"), []byte(doc), 0o644))
}

func (e *restartEnv) waitState(state string) annotation.Status {
	e.t.Helper()
	require.Eventually(e.t, func() bool { return e.status.get().State == state }, 5*time.Second, 10*time.Millisecond, "want %s, have %+v", state, e.status.get())
	return e.status.get()
}

func TestRestartOnlyAfterTrustStoreChange(t *testing.T) {
	e := startRestarts(t, systemdtest.Unit{MainPID: 100}, restart.Options{})
	e.source("registry-only", false)
	require.Eventually(t, func() bool { return e.status.get().Sources == 1 }, 5*time.Second, 10*time.Millisecond)
	require.Empty(t, e.unit.Restarts(), "hosts.toml and certs.d need no restart")

	e.source("corp", true)
	require.Eventually(t, func() bool { return len(e.unit.Restarts()) == 1 }, 5*time.Second, 10*time.Millisecond)
	require.Equal(t, []string{"containerd.service"}, e.unit.Restarts(), "only loaded units")
	st := e.waitState(annotation.StateReady)
	require.Empty(t, st.Message)
	// Counted after the unit's restart returned, which the fake records first.
	require.Eventually(t, func() bool { return metricValue(t, e.agent, "nodetrust_runtime_restarts_total") == 1.0 }, 5*time.Second, 10*time.Millisecond)

	e.agent.Trigger()
	time.Sleep(100 * time.Millisecond)
	require.Len(t, e.unit.Restarts(), 1, "not again while nothing changes")
}

func TestRestartFailureDegradesAndBacksOff(t *testing.T) {
	e := startRestarts(t, systemdtest.Unit{MainPID: 100, Result: "failed", ServiceResult: "exit-code"}, restart.Options{})
	e.source("corp", true)
	st := e.waitState(annotation.StateDegraded)
	require.Contains(t, st.Message, `restart containerd.service: job result "failed"`)

	// More syncs (a registry change, triggers) within the backoff: no new
	// attempt, which would count against systemd's start limit.
	e.source("other", false)
	for range 5 {
		e.agent.Trigger()
		time.Sleep(20 * time.Millisecond)
	}
	require.Eventually(t, func() bool { return e.status.get().Sources == 2 }, 5*time.Second, 10*time.Millisecond)
	require.Len(t, e.unit.Restarts(), 1, "one attempt per backoff period")
	require.Contains(t, e.status.get().Message, "retried after")
}

func TestRestartNeverReportsPending(t *testing.T) {
	e := startRestarts(t, systemdtest.Unit{MainPID: 100}, restart.Options{Never: true})
	e.source("corp", true)
	st := e.waitState(annotation.StatePending)
	require.Contains(t, st.Message, "restart pending")
	require.Empty(t, e.unit.Restarts())
}

func TestRestartWaitsForASlot(t *testing.T) {
	now := metav1.NewMicroTime(time.Now())
	other, duration := "other-node", int32(3600)
	leases := leasetest.New(&coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: lease.SlotName(0), Namespace: "ns"},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: &other, LeaseDurationSeconds: &duration, RenewTime: &now, AcquireTime: &now},
	})
	slots := &lease.Slots{API: leases, Namespace: "ns", Count: 1, Holder: "me"}
	e := startRestarts(t, systemdtest.Unit{MainPID: 100}, restart.Options{Slots: slots, MaxConcurrent: 1})
	e.source("corp", true)
	st := e.waitState(annotation.StatePending)
	require.Contains(t, st.Message, "waiting for a restart slot (at most 1 nodes restart at once)")
	require.Empty(t, e.unit.Restarts())

	// The other node releases its slot: the retry takes it, restarts, frees it.
	require.NoError(t, (&lease.Slots{API: leases, Namespace: "ns", Count: 1, Holder: other}).Release(context.Background(), lease.SlotName(0)))
	e.waitState(annotation.StateReady)
	require.Equal(t, []string{"containerd.service"}, e.unit.Restarts())
	l := leases.Lease("ns", lease.SlotName(0))
	require.True(t, l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity == "", "released after the restart")
}

func TestNoRestartWithoutRuntimes(t *testing.T) {
	dir := t.TempDir()
	hostfstest.MkdirAll(t, dir, "usr/local/share/ca-certificates")
	hostfstest.WriteFile(t, dir, "etc/os-release", "ID=debian\n")
	root, err := hostfs.Open(dir)
	require.NoError(t, err)
	defer root.Close()
	src, status := t.TempDir(), &statusLog{}
	dialed := false
	a := agent.New(agent.Options{Root: root, Inputs: agent.NewDir(src, nil), Publisher: status, Resync: time.Hour,
		Restarts: &restart.Options{Units: restart.DefaultUnits, Systemd: func(context.Context) (systemd.Conn, error) {
			dialed = true
			return nil, fmt.Errorf("no systemd here")
		}},
		Refresh: func(context.Context, truststore.Store, string) error { return nil },
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil))})
	e := &restartEnv{t: t, src: src, status: status, agent: a}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); require.NoError(t, <-done) }()
	e.source("corp", true)
	require.Eventually(t, func() bool { return status.get().Sources == 1 }, 5*time.Second, 10*time.Millisecond)
	require.Equal(t, annotation.StateReady, status.get().State, "no runtime, nothing to restart: %+v", status.get())
	require.False(t, dialed)
	st, err := root.LoadState()
	require.NoError(t, err)
	require.False(t, st.TrustStore)
}
