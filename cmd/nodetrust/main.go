// Command nodetrust installs registry CA certificates from labelled
// Kubernetes Secrets and ConfigMaps into a node's container runtimes and,
// optionally, its OS trust store.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// Set at build time with -ldflags "-X main.version=... -X main.commit=...".
var (
	version = "dev"
	commit  = "unknown"
)

// Exit statuses of the external contract.
const (
	exitOK      = 0
	exitProblem = 1 // a source was rejected or a write failed
	exitUsage   = 2
)

// usageError marks errors in the command line.
type usageError struct{ error }

// problemError marks a run that finished with rejected sources or failed targets.
var errProblem = errors.New("not everything applied")

const usage = `usage: nodetrust <command> [flags]

commands:
  apply    -f PATH [--host-root ROOT] [--node-labels k=v,...] [--output text|json]
           [--manage-containerd-config] [--containerd-version V] [--containerd-config PATH] [--no-wait]
           make ROOT match the sources in PATH once, then exit; one at a time per
           ROOT (a second waits for the lock, or with --no-wait exits 1)
  agent    [--kubeconfig K] [--node-name N] [--namespaces NS,...] [--host-root /host]
           [--manage-containerd-config] [--containerd-config PATH]
           [--restart auto|never] [--max-concurrent-restarts N] [--verify] [--verify-interval 10m]
           [--startup-taint KEY]
           keep the host in line with labelled sources in the cluster (DaemonSet mode);
           --source-dir DIR watches a manifest directory instead;
           --uninstall removes everything nodetrust wrote, then stays ready until stopped
  status   [--kubeconfig K] [--selector S] [--output text|json] [--wait D] [--registry R]
           every node's state from its annotations; exit 0 when all are Ready and agree
  check    REGISTRY [--host-root ROOT] [--output text|json] [--containerd-version V] [--containerd-config PATH]
           resolve REGISTRY as each runtime under ROOT would and open a TLS connection
           to each endpoint with exactly its trust; exit 0 when every runtime verifies
  version  print version and commit

Run "nodetrust <command> -h" for the flags of a command.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := runAs(ctx, os.Args[0], os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

// errHelp ends a command whose -h printed its flags: exit status 0.
var errHelp = errors.New("help shown")

// parseFlags parses a command's flags; positional arguments are a usage error.
func parseFlags(fl *flag.FlagSet, args []string) error {
	if err := fl.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return errHelp
		}
		return usageError{err}
	}
	if fl.NArg() > 0 {
		return usageError{fmt.Errorf("%s: unexpected argument %q", fl.Name(), fl.Arg(0))}
	}
	return nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	err := runCommand(ctx, args, stdout, stderr)
	if errors.Is(err, errHelp) {
		return nil
	}
	return err
}

func runCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError{errors.New("no command given\n" + usage)}
	}
	switch args[0] {
	case "apply":
		return runApply(ctx, args[1:], stdout, stderr)
	case "agent":
		return runAgent(ctx, args[1:], stderr)
	case "status":
		return runStatus(ctx, args[1:], stdout, stderr)
	case "check":
		return runCheck(ctx, args[1:], stdout, stderr)
	case "version", "--version":
		_, err := fmt.Fprintf(stdout, "nodetrust %s (commit %s)\n", version, commit)
		return err
	case "-h", "--help", "help":
		_, err := fmt.Fprint(stdout, usage)
		return err
	default:
		return usageError{fmt.Errorf("unknown command %q\n%s", args[0], usage)}
	}
}

func exitCode(err error, stderr io.Writer) int {
	var ue usageError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, errProblem):
		return exitProblem
	case errors.As(err, &ue):
		fmt.Fprintln(stderr, "nodetrust:", err)
		return exitUsage
	default:
		fmt.Fprintln(stderr, "nodetrust:", err)
		return exitProblem
	}
}
