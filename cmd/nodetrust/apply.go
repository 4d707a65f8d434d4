package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"time"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/nodetrust/nodetrust/pkg/containerd"
	"github.com/nodetrust/nodetrust/pkg/hostfs"
	"github.com/nodetrust/nodetrust/pkg/reconcile"
	"github.com/nodetrust/nodetrust/pkg/restart"
	"github.com/nodetrust/nodetrust/pkg/source"
)

// applyFlags are the command line of `nodetrust apply`.
type applyFlags struct {
	path, hostRoot, output string
	noWait                 bool
	node                   reconcile.Options
}

// parseApply parses and checks apply's command line.
func parseApply(args []string, stderr io.Writer) (applyFlags, error) {
	fl := flag.NewFlagSet("apply", flag.ContinueOnError)
	fl.SetOutput(stderr)
	var f applyFlags
	fl.StringVar(&f.path, "f", "", "manifest file or directory holding the complete desired set of sources")
	fl.StringVar(&f.hostRoot, "host-root", "/", "root of the host filesystem to write into")
	nodeLabels := fl.String("node-labels", "", "labels of this node (k=v,...); without it, node selectors are ignored")
	fl.StringVar(&f.output, "output", "text", "text or json")
	fl.BoolVar(&f.noWait, "no-wait", false, "when another nodetrust holds the lock on HOST-ROOT/var/lib/nodetrust, exit 1 naming it instead of waiting")
	fl.BoolVar(&f.node.ManageContainerdConfig, "manage-containerd-config", false, "set containerd's CRI registry config_path when it reads no hosts.toml (minimal edit; an apply without this flag, or with no sources, restores the original); restarting containerd is left to you")
	fl.StringVar(&f.node.ContainerdVersion, "containerd-version", "", "the running containerd's version (containerd --version), which decides how it reads config_path; unset: judged from the config's format")
	fl.StringVar(&f.node.ContainerdConfig, "containerd-config", "", "containerd's main config file on the node (default: found from the layout: /etc/containerd/config.toml, k3s, RKE2, MicroK8s)")
	if err := parseFlags(fl, args); err != nil {
		return f, err
	}
	if _, err := containerd.ParseVersion(f.node.ContainerdVersion); err != nil {
		return f, usageError{fmt.Errorf("apply: --containerd-version: %w", err)}
	}
	switch {
	case f.path == "":
		return f, usageError{errors.New("apply: -f PATH is required")}
	case f.output != "text" && f.output != "json":
		return f, usageError{fmt.Errorf("apply: --output must be text or json, not %q", f.output)}
	}
	if *nodeLabels != "" {
		set, err := labels.ConvertSelectorToLabelsMap(*nodeLabels)
		if err != nil {
			return f, usageError{fmt.Errorf("apply: --node-labels: %w", err)}
		}
		f.node.NodeLabels = set
	}
	return f, nil
}

func runApply(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	f, err := parseApply(args, stderr)
	if err != nil {
		return err
	}
	set, err := source.ReadPath(ctx, f.path, time.Now())
	if errors.Is(err, fs.ErrNotExist) {
		return usageError{fmt.Errorf("apply: -f %s: %w", f.path, err)}
	}
	if err != nil {
		return fmt.Errorf("apply: read %s: %w", f.path, err)
	}
	root, err := hostfs.Open(f.hostRoot)
	if err != nil {
		return usageError{fmt.Errorf("apply: --host-root: %w", err)}
	}
	defer root.Close()
	lock, err := root.Lock(ctx, !f.noWait, func(holder string) {
		fmt.Fprintf(stderr, "waiting for the lock on %s held by %s\n", filepath.Join(f.hostRoot, filepath.Dir(hostfs.LockPath)), holder)
	})
	if err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	defer func() {
		if uerr := lock.Unlock(); err == nil && uerr != nil {
			err = fmt.Errorf("apply: %w", uerr)
		}
	}()
	rep, syncErr := reconcile.Sync(ctx, root, set, f.node)
	if syncErr != nil && !errors.Is(syncErr, hostfs.ErrNotRecorded) {
		return fmt.Errorf("apply: %w", syncErr)
	}
	return reportApply(root, rep, syncErr, f.output, stdout, stderr)
}

// reportApply writes what the apply did, then hands a pending restart over
// to the operator who read it. syncErr is an apply that was not recorded.
func reportApply(root restart.Record, rep reconcile.Report, syncErr error, output string, stdout, stderr io.Writer) error {
	if syncErr != nil { // the report still says what was done; it says this too
		rep.Failed = append(rep.Failed, syncErr)
	}
	var err error
	if output == "json" {
		err = writeJSON(stdout, rep)
		writeRejections(stderr, rep)
	} else {
		err = writeText(stdout, rep)
	}
	if syncErr != nil {
		return fmt.Errorf("apply: %w", syncErr)
	}
	if err != nil {
		return err
	}
	if rep.Restart.Any() {
		// Reported above: restarting is the operator's, so a later apply or
		// agent does not report or restart it again.
		if err := restart.HandOver(root); err != nil {
			return fmt.Errorf("apply: %w", err)
		}
	}
	if !rep.OK() {
		return errProblem
	}
	return nil
}

// writeRejections writes the report's rejections, one a line.
func writeRejections(w io.Writer, rep reconcile.Report) {
	for _, p := range rep.Problems() {
		if p.Kind == reconcile.ProblemRejected {
			fmt.Fprintln(w, p.Line())
		}
	}
}

// writeText writes the report as apply's text: its problems, warnings and
// pending restarts, then what was found and done.
func writeText(w io.Writer, rep reconcile.Report) error {
	for _, p := range rep.Problems() {
		fmt.Fprintln(w, p.Line())
	}
	for _, m := range rep.WarningMessages() {
		fmt.Fprintln(w, "warning "+m)
	}
	for _, why := range rep.RestartReasons() {
		fmt.Fprintln(w, "restart pending: "+why)
	}
	for _, id := range rep.Kept {
		fmt.Fprintf(w, "kept %s as last applied\n", id)
	}
	if c := rep.Containerd; c != nil {
		how := "local pull"
		if c.Transfer {
			how = "transfer service"
		}
		fmt.Fprintf(w, "containerd: %s layout, config %s, hosts dir %s, version %s (%s)\n", c.Layout, c.Config, c.HostsDir, c.Version, how)
		if c.Note != "" {
			fmt.Fprintf(w, "containerd: %s\n", c.Note)
		}
	}
	_, err := fmt.Fprintf(w, "%d sources applied, %d rejected, %d not selected, %d warnings; %d files written, %d removed, %d failed; state %s\n",
		len(rep.Applied), len(rep.Rejected), rep.NotSelected, len(rep.Warnings),
		len(rep.Written), len(rep.Removed), len(rep.Failed), rep.Hash)
	return err
}

// jsonReport is the --output json form of a report.
type jsonReport struct {
	OK           bool            `json:"ok"`
	Hash         string          `json:"hash"`
	Applied      []string        `json:"applied"`
	Kept         []string        `json:"kept"`
	NotSelected  int             `json:"notSelected"`
	Rejected     []jsonRejection `json:"rejected"`
	Warnings     []jsonRejection `json:"warnings"`
	InputErrors  []string        `json:"inputErrors"`
	Written      []string        `json:"written"`
	Removed      []string        `json:"removed"`
	Failed       []string        `json:"failed"`
	NodeProblems []string        `json:"nodeProblems"`
	NodeWarnings []string        `json:"nodeWarnings"`
	Refreshed    bool            `json:"refreshed"`
	RefreshErr   string          `json:"refreshError,omitempty"`
	// RestartPending: the trust store changed; Restart: units whose config changed.
	RestartPending bool     `json:"restartPending"`
	Restart        []string `json:"restart"`
	// Containerd is what was found about containerd, when it is present.
	Containerd *jsonContainerd `json:"containerd,omitempty"`
}

type jsonContainerd struct {
	Layout   string `json:"layout"`
	Config   string `json:"config"`
	HostsDir string `json:"hostsDir"`
	Version  string `json:"version"`
	Transfer bool   `json:"transfer"`
	Note     string `json:"note,omitempty"`
}

type jsonRejection struct {
	Source string `json:"source"`
	Reason string `json:"reason"`
}

func writeJSON(w io.Writer, rep reconcile.Report) error {
	out := jsonReport{
		OK: rep.OK(), Hash: rep.Hash, NotSelected: rep.NotSelected, Refreshed: rep.Refreshed,
		Applied: []string{}, Kept: []string{}, Rejected: []jsonRejection{}, Warnings: []jsonRejection{},
		InputErrors: errStrings(rep.InputErrors), Written: nonNil(rep.Written), Removed: nonNil(rep.Removed),
		Failed: errStrings(rep.Failed), NodeProblems: nonNil(rep.NodeProblems), NodeWarnings: nonNil(rep.NodeWarnings),
		RestartPending: rep.Restart.TrustStore, Restart: nonNil(rep.Restart.Units),
	}
	for _, s := range rep.Applied {
		out.Applied = append(out.Applied, s.ID.String())
	}
	for _, id := range rep.Kept {
		out.Kept = append(out.Kept, id.String())
	}
	for _, r := range rep.Rejected {
		out.Rejected = append(out.Rejected, jsonRejection{r.ID.String(), r.Reason})
	}
	for _, warn := range rep.Warnings {
		out.Warnings = append(out.Warnings, jsonRejection{warn.ID.String(), warn.Message})
	}
	if rep.RefreshErr != nil {
		out.RefreshErr = rep.RefreshErr.Error()
	}
	if c := rep.Containerd; c != nil {
		out.Containerd = &jsonContainerd{c.Layout, c.Config, c.HostsDir, c.Version, c.Transfer, c.Note}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

func errStrings(errs []error) []string {
	out := make([]string, 0, len(errs))
	for _, e := range errs {
		out = append(out, e.Error())
	}
	return out
}

func nonNil(ss []string) []string {
	if ss == nil {
		return []string{}
	}
	return ss
}
