package agent_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/pkg/hostfs"
	"github.com/nodetrust/nodetrust/pkg/hostfs/hostfstest"
)

// TestAgentWaitsForLock: while an apply holds the host root's lock, the
// agent writes nothing; it syncs once the lock is released.
func TestAgentWaitsForLock(t *testing.T) {
	dir := t.TempDir()
	hostfstest.MkdirAll(t, dir, "etc/docker")
	root, err := hostfs.Open(dir)
	require.NoError(t, err)
	t.Cleanup(func() { root.Close() })
	held, err := root.Lock(context.Background(), true, nil)
	require.NoError(t, err)

	e := startOn(t, dir, caSecret(t, "a", "r.example:5000", nil), testNode(nil))
	const crt = "etc/docker/certs.d/r.example:5000/nodetrust_secret_" + ns + "_a.crt"
	time.Sleep(300 * time.Millisecond)
	require.Empty(t, e.file(crt), "no write while another holds the lock")
	require.False(t, e.agent.Ready())

	require.NoError(t, held.Unlock())
	e.eventually(func() bool { return e.file(crt) != "" && e.agent.Ready() }, "synced once the lock is free")
}
