package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/nodetrust/nodetrust/pkg/kube"
	"github.com/nodetrust/nodetrust/pkg/status"
)

// statusPoll is how often `status --wait` asks again.
const statusPoll = 2 * time.Second

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fl := flag.NewFlagSet("status", flag.ContinueOnError)
	fl.SetOutput(stderr)
	kubeconfig := fl.String("kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)")
	selector := fl.String("selector", "kubernetes.io/os=linux", "label selector of the nodes to report on (the DaemonSet's nodeSelector by default)")
	output := fl.String("output", "text", "text or json")
	wait := fl.Duration("wait", 0, "wait up to this long for every node to be Ready with the same applied state")
	reg := fl.String("registry", "", "show one registry across the nodes: verified, not verified, or not checked on each (exit 0 when it verifies wherever it was checked)")
	if err := parseFlags(fl, args); err != nil {
		return err
	}
	switch {
	case *output != "text" && *output != "json":
		return usageError{fmt.Errorf("status: --output must be text or json, not %q", *output)}
	case *wait < 0:
		return usageError{errors.New("status: --wait must not be negative")}
	}
	if _, err := labels.Parse(*selector); err != nil {
		return usageError{fmt.Errorf("status: --selector: %w", err)}
	}
	cfg, err := kube.UserConfig(*kubeconfig)
	if err != nil {
		return usageError{fmt.Errorf("status: kubernetes client config: %w", err)}
	}
	client, err := kube.New(cfg, "nodetrust-status/"+version)
	if err != nil {
		return err
	}
	s, err := pollStatus(ctx, client, *selector, *wait)
	if err != nil {
		return err
	}
	return writeStatus(stdout, *output, *reg, s)
}

// pollStatus reads the nodes matching selector until they are all Ready
// with the same applied state, or wait is over (0: once).
func pollStatus(ctx context.Context, client *kube.Client, selector string, wait time.Duration) (status.Summary, error) {
	deadline := time.Now().Add(wait)
	for {
		nodes, err := client.ListNodes(ctx, selector)
		if err != nil {
			return status.Summary{}, fmt.Errorf("status: %w", err)
		}
		s := status.Summarize(nodes)
		if s.OK() || !time.Now().Add(statusPoll).Before(deadline) {
			return s, nil
		}
		select {
		case <-ctx.Done():
			return status.Summary{}, ctx.Err()
		case <-time.After(statusPoll):
		}
	}
}

// writeStatus prints s, or its view of registry reg when not "", and
// returns errProblem when that is not OK.
func writeStatus(stdout io.Writer, output, reg string, s status.Summary) error {
	if reg != "" {
		v := s.Registry(reg)
		if err := writeOutput(stdout, output, v, v.WriteTable); err != nil {
			return err
		}
		if !v.OK() {
			return errProblem
		}
		return nil
	}
	if err := writeOutput(stdout, output, s, s.WriteTable); err != nil {
		return err
	}
	if !s.OK() {
		return errProblem
	}
	return nil
}
