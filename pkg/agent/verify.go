package agent

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nodetrust/nodetrust/pkg/annotation"
	"github.com/nodetrust/nodetrust/pkg/reconcile"
)

// DefaultVerifyInterval is how often the registries are verified again
// when nothing changed.
const DefaultVerifyInterval = 10 * time.Minute

const (
	// verifyConcurrency bounds the registries probed at once.
	verifyConcurrency = 4
	// verifyTimeout bounds one registry's verification (each probe step has
	// its own, shorter timeout).
	verifyTimeout = 30 * time.Second
)

// Verifier says whether this node's pulls from a registry will verify
// (pkg/check through cmd/nodetrust in the agent).
type Verifier interface {
	Verify(ctx context.Context, registry string) Verification
}

// Verification is one registry's outcome on this node.
type Verification struct {
	Registry string
	OK       bool
	// Reason is one line when not OK.
	Reason string
	// LeafNotAfter is the serving certificate's expiry, zero when none was seen.
	LeafNotAfter time.Time
	// Unreachable: not OK only because no endpoint answered, so nothing
	// is known about its trust. Logged and in the metric, but the node is
	// not Degraded for it: a registry that is down, or a name only some
	// nodes resolve, is not a trust problem of this node.
	Unreachable bool
}

// verified is the last verification and the state it was made for.
type verified struct {
	hash    string
	at      time.Time
	results []Verification // sorted by registry
	due     bool           // the interval elapsed
	// keys say, per registry, what its result was judged with (the
	// sources naming it and their certificates).
	keys map[string]string
}

// registriesOf lists the registries of the applied sources, sorted, once
// each, with what decides their trust: the sources naming each and their
// certificates.
func registriesOf(rep reconcile.Report) ([]string, map[string]string) {
	keys := map[string]string{}
	for _, s := range rep.Applied {
		var certs strings.Builder
		certs.WriteString(s.ID.String())
		for _, c := range s.Certs {
			certs.WriteString("\x00" + c.SHA256)
		}
		for _, r := range s.Registries {
			keys[string(r)] += certs.String() + "\n"
		}
	}
	regs := make([]string, 0, len(keys))
	for r := range keys {
		regs = append(regs, r)
	}
	slices.Sort(regs)
	return regs, keys
}

// verify runs the verifier when the applied state changed, files were
// written or removed, or the interval elapsed; otherwise the last results
// stand. After a change only the registries whose sources or certificates
// changed are checked again, so a new Secret does not wait for every other
// registry's handshake; the interval checks them all. It returns the
// results that apply to rep.
func (a *Agent) verify(ctx context.Context, rep reconcile.Report, now time.Time) []Verification {
	if !rep.Runtimes {
		return nil // no container runtime here: no pull to verify
	}
	v := &a.verified
	changed := rep.Hash != v.hash || len(rep.Written)+len(rep.Removed) > 0
	if !changed && !v.due && !v.at.IsZero() {
		return v.results
	}
	regs, keys := registriesOf(rep)
	last := map[string]Verification{}
	if !v.due {
		for _, r := range v.results {
			if keys[r.Registry] == v.keys[r.Registry] {
				last[r.Registry] = r
			}
		}
	}
	results, checked := a.verifyAll(ctx, regs, last)
	*v = verified{hash: rep.Hash, at: now, results: results, keys: keys}
	failed := 0
	for _, r := range results {
		if !r.OK {
			failed++
			a.log.Warn("registry not verified", "registry", r.Registry, "reason", r.Reason)
		}
	}
	a.log.Info("registries verified", "registries", len(results), "checked", checked, "failed", failed, "duration", time.Since(now))
	a.metrics.verifiedRegistries(results)
	return results
}

// verifyAll returns the results of regs: those in last stand, the others
// are verified, verifyConcurrency at a time. It also returns how many it
// verified.
func (a *Agent) verifyAll(ctx context.Context, regs []string, last map[string]Verification) ([]Verification, int) {
	results := make([]Verification, len(regs))
	sem := make(chan struct{}, verifyConcurrency)
	var wg sync.WaitGroup
	checked := 0
	for i, reg := range regs {
		if r, ok := last[reg]; ok {
			results[i] = r
			continue
		}
		checked++
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			rctx, cancel := context.WithTimeout(ctx, verifyTimeout)
			defer cancel()
			results[i] = a.opts.Verifier.Verify(rctx, reg)
			results[i].Registry = reg
		}()
	}
	wg.Wait()
	return results, checked
}

// withVerification degrades a Ready status when a registry does not verify
// and adds each failure to the message; an unreachable registry does not
// degrade it.
func withVerification(st annotation.Status, results []Verification) annotation.Status {
	var parts, ok, bad []string
	for _, r := range results {
		if r.OK {
			ok = append(ok, r.Registry)
		} else {
			bad = append(bad, r.Registry)
		}
		if !r.OK && !r.Unreachable {
			parts = append(parts, fmt.Sprintf("registry %s not verified: %s", r.Registry, r.Reason))
		}
	}
	st.Verified, st.Unverified = ok, bad
	if len(parts) == 0 {
		return st
	}
	if st.State == annotation.StateReady {
		st.State = annotation.StateDegraded
	}
	msg := strings.Join(parts, "; ")
	if st.Message != "" {
		msg = st.Message + "; " + msg
	}
	st.Message = annotation.OneLine(msg)
	return st
}
