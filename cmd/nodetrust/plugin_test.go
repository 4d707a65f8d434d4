package main

import (
	"bytes"
	"context"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestRunAsPlugin: under the name kubectl-nodetrust the binary offers
// status, check and version with the plugin's usage; under any other name
// every command.
func TestRunAsPlugin(t *testing.T) {
	for name, tc := range map[string]struct {
		argv0  string
		args   []string
		usage  bool   // a usage error (exit 2)
		errHas string // in the error
		out    string // in stdout
	}{
		"plugin help":             {argv0: "/usr/local/bin/kubectl-nodetrust", args: []string{"--help"}, out: "usage: kubectl nodetrust <command>"},
		"plugin version":          {argv0: "kubectl-nodetrust", args: []string{"version"}, out: "nodetrust dev"},
		"plugin no command":       {argv0: "kubectl-nodetrust", usage: true},
		"plugin agent refused":    {argv0: "kubectl-nodetrust", args: []string{"agent"}, usage: true, errHas: `unknown command "agent" for kubectl nodetrust`},
		"plugin apply refused":    {argv0: "kubectl-nodetrust.exe", args: []string{"apply", "-f", "x"}, usage: true, errHas: "for kubectl nodetrust"},
		"plugin check flags":      {argv0: "kubectl-nodetrust", args: []string{"check", "-h"}},
		"plugin status bad flag":  {argv0: "kubectl-nodetrust", args: []string{"status", "--nope"}, usage: true},
		"nodetrust help":          {argv0: "nodetrust", args: []string{"help"}, out: "usage: nodetrust <command>"},
		"nodetrust apply allowed": {argv0: "/bin/nodetrust", args: []string{"apply", "-f", "/nonexistent"}, usage: true, errHas: "apply: -f /nonexistent"},
	} {
		t.Run(name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := runAs(context.Background(), tc.argv0, tc.args, &stdout, &stderr)
			var ue usageError
			if !tc.usage {
				require.NoError(t, err)
			} else {
				require.ErrorAs(t, err, &ue)
				require.Contains(t, err.Error(), tc.errHas)
			}
			require.Contains(t, stdout.String(), tc.out)
		})
	}
}
