package truststore

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestDetect(t *testing.T) {
	tests := map[string]struct {
		osRelease string
		family    string
		err       string
	}{
		"debian":       {"PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n", "debian", ""},
		"ubuntu":       {"ID=ubuntu\nID_LIKE=debian\n", "debian", ""},
		"alpine":       {"ID=alpine\n", "alpine", ""},
		"pop via like": {"ID=pop\nID_LIKE=\"ubuntu debian\"\n", "debian", ""},
		"rhel":         {"ID=\"rhel\"\nID_LIKE=\"fedora\"\n", "rhel", ""},
		"rocky":        {"ID=\"rocky\"\n", "rhel", ""},
		"alma":         {"ID=\"almalinux\"\n", "rhel", ""},
		"amazon":       {"ID=\"amzn\"\nID_LIKE=\"centos rhel fedora\"\n", "rhel", ""},
		"azurelinux":   {"ID=azurelinux\n", "rhel", ""},
		"fedora":       {"ID=fedora\n", "rhel", ""},
		"sles":         {"ID=\"sles\"\nID_LIKE=\"suse\"\n", "suse", ""},
		"opensuse":     {"ID=\"opensuse-leap\"\nID_LIKE=\"suse opensuse\"\n", "suse", ""},
		"flatcar":      {"ID=flatcar\nID_LIKE=coreos\n", "flatcar", ""},
		"bottlerocket": {"ID=bottlerocket\n", "", "immutable"},
		"talos":        {"ID=talos\n", "", "immutable"},
		"unknown":      {"ID=plan9\n", "", `unknown OS "plan9"`},
		"no id":        {"NAME=x\n", "", "has no ID"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			st, err := Detect([]byte(tc.osRelease))
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				require.ErrorContains(t, err, "host trust is unsupported")
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.family, st.Family)
			require.NotEmpty(t, st.AnchorDir)
		})
	}
}

func TestRefreshReportsFailure(t *testing.T) {
	st := Store{Family: "test", Command: []string{"/bin/sh", "-c", "echo first; echo boom >&2; exit 3"}}
	err := st.Refresh(context.Background(), "/")
	require.ErrorContains(t, err, "exit status 3")
	require.ErrorContains(t, err, "first | boom")

	require.NoError(t, Store{Command: []string{"/bin/true"}}.Refresh(context.Background(), "/"))
}

func TestRefreshMissingCommandInRoot(t *testing.T) {
	err := debian.Refresh(context.Background(), t.TempDir())
	require.ErrorContains(t, err, "/usr/sbin/update-ca-certificates")
}
