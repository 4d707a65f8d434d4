package agent

import (
	"fmt"
	"sort"
	"time"
)

// A file nodetrust owns that someone deletes fightCount times within
// fightWindow is deleted on every pass of another writer.
const (
	fightCount  = 3
	fightWindow = 10 * time.Minute
)

// writers remembers when owned files were found deleted and written again,
// to tell a writer that deletes nodetrust's files on every pass (OpenShift's
// node-ca, a configuration manager) from a one-off removal (k3s at start).
type writers struct {
	recreated map[string][]time.Time // the last fightCount times, by path
}

// note records the files recreated now and returns the problem a fight
// makes, or "".
func (w *writers) note(recreated []string, now time.Time) string {
	if w.recreated == nil {
		w.recreated = map[string][]time.Time{}
	}
	for _, p := range recreated {
		times := append(w.recreated[p], now)
		if len(times) > fightCount {
			times = times[len(times)-fightCount:]
		}
		w.recreated[p] = times
	}
	var fights []string
	var span time.Duration
	for p, times := range w.recreated {
		if now.Sub(times[len(times)-1]) > fightWindow {
			delete(w.recreated, p)
			continue
		}
		if len(times) == fightCount && now.Sub(times[0]) <= fightWindow {
			fights = append(fights, p)
			span = max(span, times[len(times)-1].Sub(times[0]))
		}
	}
	if len(fights) == 0 {
		return ""
	}
	sort.Strings(fights)
	return fmt.Sprintf("another writer deletes nodetrust's files on every pass: /%s (and %d more) deleted and written again %d times within %s; "+
		"give that writer the CA instead (OpenShift: the image.config.openshift.io additionalTrustedCA ConfigMap; k3s/RKE2: registries.yaml tls.ca_file), or stop it managing this directory",
		fights[0], len(fights)-1, fightCount, span.Round(time.Second))
}
