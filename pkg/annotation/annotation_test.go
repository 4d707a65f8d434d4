package annotation_test

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/pkg/annotation"
)

func TestEncodeDecode(t *testing.T) {
	at := time.Date(2026, 11, 22, 13, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		st   annotation.Status
		want map[string]string
	}{
		{name: "ready",
			st: annotation.Status{State: annotation.StateReady, Applied: "abc123abc123", Sources: 2, Warnings: 1,
				Verified: []string{"a.example", "b.example:5000"}, Unverified: []string{}},
			want: map[string]string{
				"nodetrust.io/state": "Ready", "nodetrust.io/applied": "abc123abc123", "nodetrust.io/sources": "2",
				"nodetrust.io/message": "", "nodetrust.io/warnings": "1", "nodetrust.io/synced-at": "2026-11-22T13:00:00Z",
				"nodetrust.io/verified": "a.example,b.example:5000", "nodetrust.io/unverified": "",
			}},
		{name: "degraded",
			st: annotation.Status{State: annotation.StateDegraded, Applied: "h", Message: "1 problem(s): x",
				Verified: []string{}, Unverified: []string{"c.example"}},
			want: map[string]string{
				"nodetrust.io/state": "Degraded", "nodetrust.io/applied": "h", "nodetrust.io/sources": "0",
				"nodetrust.io/message": "1 problem(s): x", "nodetrust.io/warnings": "0", "nodetrust.io/synced-at": "2026-11-22T13:00:00Z",
				"nodetrust.io/verified": "", "nodetrust.io/unverified": "c.example",
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := annotation.Encode(tt.st, at.In(time.FixedZone("x", 3600)))
			require.Equal(t, tt.want, got)
			keys := make([]string, 0, len(got))
			for k := range got {
				keys = append(keys, k)
			}
			require.ElementsMatch(t, annotation.Keys(), keys)
			st, syncedAt := annotation.Decode(got)
			require.Equal(t, tt.st, st)
			require.Equal(t, at, syncedAt)
		})
	}
}

func TestEncodeWithoutSyncedAt(t *testing.T) {
	a := annotation.Encode(annotation.Status{State: annotation.StateReady}, time.Time{})
	require.NotContains(t, a, annotation.KeySyncedAt)
	require.Len(t, a, len(annotation.Keys())-1)
}

func TestDecodeNoReport(t *testing.T) {
	st, syncedAt := annotation.Decode(map[string]string{"other": "x", annotation.KeySources: "many"})
	require.Equal(t, annotation.Status{Verified: []string{}, Unverified: []string{}}, st)
	require.True(t, syncedAt.IsZero())
}

func TestOneLine(t *testing.T) {
	require.Equal(t, "a b c", annotation.OneLine(" a\n\tb  c "))
	long := annotation.OneLine(strings.Repeat("x ", 600))
	require.Len(t, long, annotation.MaxMessage)
	require.True(t, strings.HasSuffix(long, "..."))
}

func TestCondition(t *testing.T) {
	tests := []struct {
		st   annotation.Status
		want annotation.Condition
	}{
		{st: annotation.Status{State: annotation.StateReady, Sources: 2, Applied: "h"},
			want: annotation.Condition{True: true, Reason: annotation.ReasonApplied, Message: "2 sources applied (state h)"}},
		{st: annotation.Status{State: annotation.StatePending, Message: "restart pending: x"},
			want: annotation.Condition{Reason: annotation.ReasonRestartPending, Message: "restart pending: x"}},
		{st: annotation.Status{State: annotation.StateDegraded, Message: "1 problem(s): y"},
			want: annotation.Condition{Reason: annotation.ReasonDegraded, Message: "1 problem(s): y"}},
	}
	for _, tt := range tests {
		t.Run(tt.st.State, func(t *testing.T) {
			require.Equal(t, tt.want, tt.st.Condition())
		})
	}
}
