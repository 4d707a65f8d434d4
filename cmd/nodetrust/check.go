package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/nodetrust/nodetrust/pkg/check"
	"github.com/nodetrust/nodetrust/pkg/containerd"
	"github.com/nodetrust/nodetrust/pkg/hostfs"
	"github.com/nodetrust/nodetrust/pkg/registry"
)

func runCheck(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fl := flag.NewFlagSet("check", flag.ContinueOnError)
	fl.SetOutput(stderr)
	hostRoot := fl.String("host-root", "/", "root of the host filesystem whose runtimes are checked")
	output := fl.String("output", "text", "text or json")
	cdVersion := fl.String("containerd-version", "", "the running containerd's version, as for apply")
	cdConfig := fl.String("containerd-config", "", "containerd's main config file on the node, as for apply")
	reg, err := parseCheckArgs(fl, args)
	if err != nil {
		return err
	}
	if *output != "text" && *output != "json" {
		return usageError{fmt.Errorf("check: --output must be text or json, not %q", *output)}
	}
	root, err := hostfs.Open(*hostRoot)
	if err != nil {
		return usageError{fmt.Errorf("check: --host-root: %w", err)}
	}
	defer root.Close()
	if _, err := containerd.ParseVersion(*cdVersion); err != nil {
		return usageError{fmt.Errorf("check: --containerd-version: %w", err)}
	}
	rep := check.Registry(ctx, root, reg, check.Options{ContainerdVersion: *cdVersion, ContainerdConfig: *cdConfig})
	if err := writeOutput(stdout, *output, rep, rep.WriteText); err != nil {
		return err
	}
	if !rep.OK {
		return errProblem
	}
	return nil
}

// writeOutput writes v as indented JSON for --output json, else as text.
func writeOutput(w io.Writer, output string, v any, text func(io.Writer) error) error {
	if output == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	return text(w)
}

// parseCheckArgs takes exactly one REGISTRY, before or among the flags.
func parseCheckArgs(fl *flag.FlagSet, args []string) (string, error) {
	var pos []string
	for {
		if err := fl.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return "", errHelp
			}
			return "", usageError{err}
		}
		if fl.NArg() == 0 {
			break
		}
		pos = append(pos, fl.Arg(0))
		args = fl.Args()[1:]
	}
	if len(pos) != 1 {
		return "", usageError{fmt.Errorf("check: want one REGISTRY (host or host:port, as in image references), got %d arguments", len(pos))}
	}
	h, err := registry.Parse(pos[0])
	if err != nil {
		return "", usageError{fmt.Errorf("check: %w", err)}
	}
	return string(h), nil
}
