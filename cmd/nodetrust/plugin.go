package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
)

// pluginName is the name under which kubectl runs nodetrust as a plugin:
// `kubectl nodetrust status` executes kubectl-nodetrust from $PATH (a
// symlink to this binary, `make plugin`) with the arguments after
// "nodetrust", and $KUBECONFIG as kubectl had it.
const pluginName = "kubectl-nodetrust"

const pluginUsage = `usage: kubectl nodetrust <command> [flags]

commands:
  status   [--kubeconfig K] [--selector S] [--output text|json] [--wait D]
           every node's state from its annotations; exit 0 when all are Ready and agree
  check    REGISTRY [--host-root ROOT] [--output text|json]
           how the runtimes under ROOT (default /) would verify REGISTRY's TLS
  version  print version and commit

Run "kubectl nodetrust <command> -h" for the flags of a command.
`

// isPlugin reports whether argv0 is the kubectl plugin name.
func isPlugin(argv0 string) bool {
	return strings.TrimSuffix(filepath.Base(argv0), ".exe") == pluginName
}

// pluginArgs checks the arguments of `kubectl nodetrust ...`: only the
// commands that read the cluster or the local host (status, check) and
// version/help; the agent and apply stay `nodetrust` commands.
func pluginArgs(args []string) ([]string, error) {
	if len(args) == 0 {
		return nil, usageError{errors.New("no command given\n" + pluginUsage)}
	}
	switch args[0] {
	case "status", "check", "version", "--version":
		return args, nil
	case "-h", "--help", "help":
		return nil, errPluginHelp
	default:
		return nil, usageError{fmt.Errorf("unknown command %q for kubectl nodetrust\n%s", args[0], pluginUsage)}
	}
}

// errPluginHelp asks runAs to print pluginUsage.
var errPluginHelp = errors.New("plugin help")

// runAs runs the command line of a binary started as argv0: nodetrust's
// commands, or as kubectl-nodetrust the plugin's.
func runAs(ctx context.Context, argv0 string, args []string, stdout, stderr io.Writer) error {
	if !isPlugin(argv0) {
		return run(ctx, args, stdout, stderr)
	}
	args, err := pluginArgs(args)
	if errors.Is(err, errPluginHelp) {
		_, err = fmt.Fprint(stdout, pluginUsage)
		return err
	}
	if err != nil {
		return err
	}
	return run(ctx, args, stdout, stderr)
}
