// Command containerd17 loads a containerd config file with containerd
// 1.7's own code and prints, as JSON, what containerd 1.7 hands its CRI
// plugin and what the plugin's validation says about it.
//
// It is its own module because containerd 1.7's pkg/cri/config imports
// containerd 1.7's client, which does not compile against the
// github.com/containerd/containerd/api and opencontainers/runtime-spec
// versions that containerd v2 requires; the loaders module needs v2, so
// its tests build this command and run it (containerd_config_test.go).
//
// Usage: containerd17 CONFIG.toml
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"

	criconfig "github.com/containerd/containerd/pkg/cri/config"
	"github.com/containerd/containerd/plugin"
	srvconfig "github.com/containerd/containerd/services/server/config"
	"github.com/containerd/log"
	"github.com/sirupsen/logrus"
)

// Result is what containerd 1.7 made of a config file.
type Result struct {
	// LoadError is LoadConfig's or Decode's error; the other fields are
	// then empty.
	LoadError string `json:"loadError,omitempty"`
	// Files are the files LoadConfig read (the config and its imports), sorted.
	Files []string `json:"files,omitempty"`
	// ConfigPath and Mirrors are the decoded CRI registry settings.
	ConfigPath string   `json:"configPath"`
	Mirrors    []string `json:"mirrors,omitempty"`
	// ValidateError is ValidatePluginConfig's error, which makes containerd
	// refuse to start its CRI plugin; Warnings are its deprecations.
	ValidateError string   `json:"validateError,omitempty"`
	Warnings      []string `json:"warnings,omitempty"`
	// Logs are the warnings and errors containerd logged meanwhile.
	Logs []string `json:"logs,omitempty"`
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: containerd17 CONFIG.toml")
		os.Exit(2)
	}
	if err := json.NewEncoder(os.Stdout).Encode(load(os.Args[1])); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// logHook records warnings and errors.
type logHook struct{ entries *[]string }

func (logHook) Levels() []logrus.Level {
	return []logrus.Level{logrus.PanicLevel, logrus.FatalLevel, logrus.ErrorLevel, logrus.WarnLevel}
}

func (h logHook) Fire(e *logrus.Entry) error {
	*h.entries = append(*h.entries, e.Level.String()+": "+e.Message)
	return nil
}

func load(path string) Result {
	var res Result
	// LoadConfig logs with logrus' standard logger, the CRI plugin with the
	// context's; both are captured, neither printed.
	logrus.StandardLogger().SetOutput(io.Discard)
	logrus.StandardLogger().AddHook(logHook{&res.Logs})
	l := logrus.New()
	l.SetOutput(io.Discard)
	l.AddHook(logHook{&res.Logs})
	ctx := log.WithLogger(context.Background(), logrus.NewEntry(l))

	// containerd 1.7's defaultConfig() starts at version 1
	// (cmd/containerd/command/config.go), then LoadConfig merges the file
	// and its imports into it.
	cfg := &srvconfig.Config{Version: 1}
	if err := srvconfig.LoadConfig(path, cfg); err != nil {
		res.LoadError = err.Error()
		return res
	}
	// The CRI plugin's registration (pkg/cri/cri.go): containerd's
	// Config.Decode reads [plugins."io.containerd.grpc.v1.cri"] (its URI)
	// in version 2 files and [plugins.cri] (its ID) in version 1 files,
	// into DefaultConfig().
	config := criconfig.DefaultConfig()
	reg := &plugin.Registration{Type: plugin.GRPCPlugin, ID: "cri", Config: &config}
	if _, err := cfg.Decode(reg); err != nil {
		res.LoadError = err.Error()
		return res
	}
	res.Files = append(res.Files, cfg.Imports...)
	sort.Strings(res.Files)
	res.ConfigPath = config.Registry.ConfigPath
	for host := range config.Registry.Mirrors {
		res.Mirrors = append(res.Mirrors, host)
	}
	sort.Strings(res.Mirrors)

	// What the CRI plugin's InitFn checks before it starts.
	warnings, err := criconfig.ValidatePluginConfig(ctx, &config)
	if err != nil {
		res.ValidateError = err.Error()
	}
	for _, w := range warnings {
		res.Warnings = append(res.Warnings, string(w))
	}
	res.Logs = dedupe(res.Logs)
	return res
}

// dedupe drops repeated log lines, keeping order.
func dedupe(lines []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, l := range lines {
		if !seen[l] {
			seen[l] = true
			out = append(out, l)
		}
	}
	return out
}
