package registry

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParse(t *testing.T) {
	valid := []string{
		"registry.example.com:5000", "10.0.0.7:5000", "[fd00::1]:5000", "harbor.local",
		"localhost", "localhost:5000", "docker.io", "[::1]", "Registry-1.Example.COM",
		"nvcr.io", "a:1", "a:65535", "xn--bcher-kva.example",
	}
	for _, s := range valid {
		t.Run("valid/"+s, func(t *testing.T) {
			h, err := Parse(s)
			require.NoError(t, err)
			require.Equal(t, Host(s), h)
		})
	}

	invalid := map[string]string{
		"":                         "empty entry",
		"https://registry.example": "scheme",
		"registry.example/library": "slash",
		`registry\example`:         "slash",
		"../etc":                   "slash",
		"..":                       `".."`,
		"a..b":                     `".."`,
		"user@registry.example":    `"@"`,
		"reg istry":                "whitespace",
		"reg\tistry":               "whitespace",
		"registry:":                "empty port",
		"registry:0":               "outside 1-65535",
		"registry:65536":           "outside 1-65535",
		"registry:080":             `port "080" has a leading zero; image references spell a port without one: write 80`,
		"harbor.local:00080":       `registry "harbor.local:00080": port "00080" has a leading zero`,
		"registry:00":              "outside 1-65535",
		"[fd00::1]:05000":          "write 5000",
		"registry:http":            "not a number",
		"fd00::1":                  "must be bracketed",
		"fd00::1:5000":             "must be bracketed",
		"[fd00::1]:":               "empty port",
		"[fd00::1":                 "unterminated",
		"[fd00::1]x":               "unterminated",
		"[10.0.0.1]":               "not a valid bracketed IPv6",
		"[fe80::1%eth0]":           "not a valid bracketed IPv6",
		".registry":                "empty label",
		"registry.":                "empty label",
		"-registry":                "invalid character",
		"registry-":                "invalid character",
		"reg_istry":                "invalid character",
		"999.1.1.1":                "not a valid IPv4",
		":5000":                    "empty host",
		".":                        "empty label",
		"a:b:c":                    "must be bracketed",
		strings.Repeat("a", 64):    "longer than 63",
		strings.Repeat("a.", 200):  "longer than",
		"registry.example\x00":     "invalid character",
	}
	for s, want := range invalid {
		t.Run("invalid/"+s, func(t *testing.T) {
			_, err := Parse(s)
			require.ErrorContains(t, err, want)
		})
	}
}

func TestParseList(t *testing.T) {
	hosts, err := ParseList(" a.example:5000 , b.example,a.example:5000")
	require.NoError(t, err)
	require.Equal(t, []Host{"a.example:5000", "b.example"}, hosts)

	_, err = ParseList("a.example,,b.example")
	require.ErrorContains(t, err, "empty entry")
}

func TestHostname(t *testing.T) {
	for in, want := range map[Host]string{
		"registry.example.com:5000": "registry.example.com",
		"harbor.local":              "harbor.local",
		"[fd00::1]:5000":            "fd00::1",
		"[fd00::1]":                 "fd00::1",
		"10.0.0.7:5000":             "10.0.0.7",
	} {
		require.Equal(t, want, in.Hostname(), in)
	}
}

// FuzzParse checks the property that matters for the filesystem: whatever
// passes is a single, clean path element that cannot escape a directory.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"registry.example.com:5000", "[fd00::1]:5000", "../x", "a/b", "a:b:c", "\x00", "[", "[::1]:1", "1.2.3.4"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		h, err := Parse(s)
		if err != nil {
			return
		}
		require.Equal(t, s, string(h))
		require.Equal(t, s, filepath.Base(s), "not a single path element")
		require.Equal(t, s, filepath.Clean(s))
		require.NotEqual(t, ".", s)
		require.NotContains(t, s, "..")
		require.False(t, strings.HasPrefix(s, "."), "hidden or relative name")
		require.NotEmpty(t, h.Hostname())
	})
}
