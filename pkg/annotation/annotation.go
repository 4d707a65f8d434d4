// Package annotation is the contract of what a node reports (SPEC §4): the
// Status its agent publishes, the Node annotation keys that carry it, the
// encoding of a Status into those annotations and the decoding back, and the
// NodeTrustReady condition a Status reads as. The agent encodes
// (pkg/cluster writes the result on the Node); `nodetrust status`
// (pkg/status) decodes. It knows no Kubernetes types: annotations are a
// map of strings.
package annotation

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Node annotation keys of the external contract.
const (
	KeyState    = "nodetrust.io/state"
	KeyApplied  = "nodetrust.io/applied"
	KeySources  = "nodetrust.io/sources"
	KeyMessage  = "nodetrust.io/message"
	KeySyncedAt = "nodetrust.io/synced-at"
	// KeyWarnings counts warnings (expired or mismatched certificates,
	// unsupported host trust, an unverifiable containerd config); an
	// extension of the contract, for `nodetrust status`.
	KeyWarnings = "nodetrust.io/warnings"
	// KeyVerified and KeyUnverified list, comma-separated, the registries
	// of the applied sources whose pulls verify, or do not (--verify; an
	// unreachable registry is unverified without degrading the node).
	// Extensions, for `nodetrust status --registry`.
	KeyVerified   = "nodetrust.io/verified"
	KeyUnverified = "nodetrust.io/unverified"
)

// Node states reported in KeyState.
const (
	StateReady    = "Ready"
	StateDegraded = "Degraded"
	StatePending  = "Pending"
)

// MaxMessage bounds KeyMessage.
const MaxMessage = 512

// Status is the node's state as reported by the agent.
type Status struct {
	// State is StateReady, StateDegraded or StatePending; "" decoded from
	// a Node without a report.
	State    string
	Applied  string // short hash of the applied desired state
	Sources  int
	Message  string // "" when Ready, else one line (OneLine)
	Warnings int    // warnings about sources or the node; they do not degrade it
	// Verified and Unverified list, sorted, the registries whose pulls were
	// checked (--verify) and do, or do not, verify; both empty when nothing
	// was checked.
	Verified, Unverified []string
}

// OneLine makes s fit KeyMessage: every run of white space becomes one
// space, and a longer text is cut to MaxMessage bytes ending in "...".
func OneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > MaxMessage {
		s = s[:MaxMessage-3] + "..."
	}
	return s
}

// Keys lists every annotation Encode writes, KeySyncedAt included.
func Keys() []string {
	return []string{KeyState, KeyApplied, KeySources, KeyMessage, KeyWarnings, KeyVerified, KeyUnverified, KeySyncedAt}
}

// Encode returns st as Node annotations, with KeySyncedAt at syncedAt (in
// UTC, to the second). A zero syncedAt leaves KeySyncedAt out: that is what
// to compare with a Node's annotations to see whether st is there already.
func Encode(st Status, syncedAt time.Time) map[string]string {
	a := map[string]string{
		KeyState:      st.State,
		KeyApplied:    st.Applied,
		KeySources:    strconv.Itoa(st.Sources),
		KeyMessage:    st.Message,
		KeyWarnings:   strconv.Itoa(st.Warnings),
		KeyVerified:   strings.Join(st.Verified, ","),
		KeyUnverified: strings.Join(st.Unverified, ","),
	}
	if !syncedAt.IsZero() {
		a[KeySyncedAt] = syncedAt.UTC().Format(time.RFC3339)
	}
	return a
}

// Decode reads a Node's annotations back into the Status its agent
// published, and when (zero when absent). What does not parse reads as
// zero; the registry lists are empty, not nil, when absent.
func Decode(a map[string]string) (Status, time.Time) {
	st := Status{State: a[KeyState], Applied: a[KeyApplied], Message: a[KeyMessage]}
	st.Sources, _ = strconv.Atoi(a[KeySources])
	st.Warnings, _ = strconv.Atoi(a[KeyWarnings])
	st.Verified, st.Unverified = list(a[KeyVerified]), list(a[KeyUnverified])
	syncedAt, _ := time.Parse(time.RFC3339, a[KeySyncedAt])
	return st, syncedAt
}

func list(v string) []string {
	if v == "" {
		return []string{}
	}
	return strings.Split(v, ",")
}

// ConditionType is the Node condition that mirrors the state (SPEC §4).
const ConditionType = "NodeTrustReady"

// Reasons of the ConditionType condition, by state.
const (
	ReasonApplied        = "Applied"
	ReasonDegraded       = "Degraded"
	ReasonRestartPending = "RestartPending"
)

// Condition is the ConditionType condition of a Status, without the
// Kubernetes types and times.
type Condition struct {
	True            bool // status "True": the state is Ready
	Reason, Message string
}

// Condition is the ConditionType condition st reads as.
func (st Status) Condition() Condition {
	switch st.State {
	case StateReady:
		return Condition{True: true, Reason: ReasonApplied, Message: fmt.Sprintf("%d sources applied (state %s)", st.Sources, st.Applied)}
	case StatePending:
		return Condition{Reason: ReasonRestartPending, Message: st.Message}
	}
	return Condition{Reason: ReasonDegraded, Message: st.Message}
}
