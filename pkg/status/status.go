// Package status is the cluster view of nodetrust: every node's report,
// decoded by pkg/annotation from the annotations its agent keeps on the Node,
// and whether the nodes agree, overall or about one registry. `nodetrust
// status` prints it as a table or JSON.
package status

import (
	"bytes"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/nodetrust/nodetrust/pkg/annotation"
)

// Node is one node's report.
type Node struct {
	Name string `json:"name"`
	// State is Ready, Degraded or Pending; "" when the node has no report
	// (no agent ran there, or it was uninstalled).
	State    string    `json:"state"`
	Applied  string    `json:"applied"`
	Sources  int       `json:"sources"`
	Warnings int       `json:"warnings"`
	Message  string    `json:"message"`
	SyncedAt time.Time `json:"syncedAt,omitzero"`
	// Verified and Unverified are the registries whose pulls the agent
	// checked (--verify) and that do, or do not, verify.
	Verified   []string `json:"verified"`
	Unverified []string `json:"unverified"`
}

// Reported reports whether an agent annotated the node.
func (n Node) Reported() bool { return n.State != "" }

// FromNode reads a Node's report from its annotations.
func FromNode(n *corev1.Node) Node {
	st, syncedAt := annotation.Decode(n.Annotations)
	return Node{Name: n.Name, State: st.State, Applied: st.Applied, Sources: st.Sources, Warnings: st.Warnings,
		Message: st.Message, SyncedAt: syncedAt, Verified: st.Verified, Unverified: st.Unverified}
}

// Registry is what one node says about a registry: "verified", "not
// verified", or "not checked" (no applied source names it there, or
// verification is off).
func (n Node) Registry(r string) string {
	switch {
	case slices.Contains(n.Unverified, r):
		return "not verified"
	case slices.Contains(n.Verified, r):
		return "verified"
	}
	return "not checked"
}

// Summary is the view over a set of nodes.
type Summary struct {
	Nodes []Node `json:"nodes"`
	// Counts by state; Unreported counts nodes without a report.
	Ready      int `json:"ready"`
	Degraded   int `json:"degraded"`
	Pending    int `json:"pending"`
	Unreported int `json:"unreported"`
	// Applied counts reporting nodes by applied-state hash: one entry when
	// every node applies the same sources.
	Applied map[string]int `json:"applied"`
}

// Summarize builds the view, nodes sorted by name.
func Summarize(nodes []corev1.Node) Summary {
	s := Summary{Nodes: make([]Node, 0, len(nodes)), Applied: map[string]int{}}
	for i := range nodes {
		n := FromNode(&nodes[i])
		s.Nodes = append(s.Nodes, n)
		switch n.State {
		case annotation.StateReady:
			s.Ready++
		case annotation.StateDegraded:
			s.Degraded++
		case annotation.StatePending:
			s.Pending++
		case "":
			s.Unreported++
			continue
		}
		s.Applied[n.Applied]++
	}
	sort.Slice(s.Nodes, func(i, j int) bool { return s.Nodes[i].Name < s.Nodes[j].Name })
	return s
}

// OK reports whether there is at least one node, every node is Ready, and
// all apply the same state.
func (s Summary) OK() bool {
	return len(s.Nodes) > 0 && s.Ready == len(s.Nodes) && len(s.Applied) == 1
}

// Line is the one-line summary.
func (s Summary) Line() string {
	agree := "the same applied state"
	if len(s.Applied) != 1 {
		agree = fmt.Sprintf("%d different applied states", len(s.Applied))
	}
	nodes := "nodes"
	if len(s.Nodes) == 1 {
		nodes = "node"
	}
	return fmt.Sprintf("%d %s: %d Ready, %d Degraded, %d Pending, %d not reporting; %s",
		len(s.Nodes), nodes, s.Ready, s.Degraded, s.Pending, s.Unreported, agree)
}

// WriteTable prints one row per node, then the summary line.
func (s Summary) WriteTable(w io.Writer) error {
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tSTATE\tSOURCES\tAPPLIED\tSYNCED\tNOT VERIFIED\tMESSAGE")
	for _, n := range s.Nodes {
		if !n.Reported() {
			fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\tno report: no nodetrust agent has run on this node\n", n.Name)
			continue
		}
		synced := "-"
		if !n.SyncedAt.IsZero() {
			synced = n.SyncedAt.UTC().Format(time.RFC3339)
		}
		unverified := "-"
		if len(n.Unverified) > 0 {
			unverified = strings.Join(n.Unverified, ",")
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", n.Name, n.State, n.Sources, n.Applied, synced, unverified, strings.ReplaceAll(n.Message, "\t", " "))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, line := range strings.SplitAfter(buf.String(), "\n") {
		if line != "" {
			if _, err := io.WriteString(w, strings.TrimRight(line, " \n")+"\n"); err != nil {
				return err
			}
		}
	}
	_, err := fmt.Fprintln(w, s.Line())
	return err
}

// RegistryView is one registry across the nodes (`nodetrust status
// --registry R`).
type RegistryView struct {
	Registry string            `json:"registry"`
	Nodes    map[string]string `json:"nodes"` // node → Node.Registry
	// Verified counts the nodes where it verifies, of Checked.
	Verified, Checked int
}

// Registry builds the view of r.
func (s Summary) Registry(r string) RegistryView {
	v := RegistryView{Registry: r, Nodes: map[string]string{}}
	for _, n := range s.Nodes {
		got := n.Registry(r)
		v.Nodes[n.Name] = got
		if got != "not checked" {
			v.Checked++
		}
		if got == "verified" {
			v.Verified++
		}
	}
	return v
}

// OK reports whether r was checked on some node and verifies wherever it was.
func (v RegistryView) OK() bool { return v.Checked > 0 && v.Verified == v.Checked }

// WriteTable prints one row per node, then a summary line.
func (v RegistryView) WriteTable(w io.Writer) error {
	names := make([]string, 0, len(v.Nodes))
	for n := range v.Nodes {
		names = append(names, n)
	}
	sort.Strings(names)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\t"+v.Registry)
	for _, n := range names {
		fmt.Fprintf(tw, "%s\t%s\n", n, v.Nodes[n])
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "%s: verified on %d of the %d nodes that checked it (%d nodes)\n", v.Registry, v.Verified, v.Checked, len(v.Nodes))
	return err
}
