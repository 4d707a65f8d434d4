package agent

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestWritersFight(t *testing.T) {
	var w writers
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	f := "etc/docker/certs.d/r/nodetrust_secret_ns_a.crt"
	require.Empty(t, w.note([]string{f}, t0), "k3s at start: once")
	require.Empty(t, w.note(nil, t0.Add(time.Second)), "an intact pass")
	require.Empty(t, w.note([]string{f}, t0.Add(time.Minute)))
	got := w.note([]string{f}, t0.Add(2*time.Minute))
	require.Contains(t, got, "another writer deletes nodetrust's files on every pass: /"+f+" (and 0 more) deleted and written again 3 times within 2m0s")
	require.NotEmpty(t, w.note(nil, t0.Add(5*time.Minute)), "stays reported while the fight is recent")
	require.Empty(t, w.note(nil, t0.Add(13*time.Minute)), "forgotten once it stops")

	var slow writers
	for i := range 5 {
		require.Empty(t, slow.note([]string{f}, t0.Add(time.Duration(i)*6*time.Minute)), "once every 6 minutes is not every pass within 10")
	}
}
