package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/klog/v2"

	"github.com/nodetrust/nodetrust/pkg/agent"
	"github.com/nodetrust/nodetrust/pkg/check"
	"github.com/nodetrust/nodetrust/pkg/cluster"
	"github.com/nodetrust/nodetrust/pkg/hostfs"
	"github.com/nodetrust/nodetrust/pkg/kube"
	"github.com/nodetrust/nodetrust/pkg/lease"
	"github.com/nodetrust/nodetrust/pkg/restart"
	"github.com/nodetrust/nodetrust/pkg/systemd"
)

// saNamespaceFile holds the pod's namespace in a ServiceAccount token mount.
const saNamespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

type agentFlags struct {
	kubeconfig, nodeName, namespaces, hostRoot, healthAddr, sourceDir, nodeLabels, logLevel string
	restart, restartUnits, systemdAddress                                                   string
	maxRestarts                                                                             int
	containerdConfig, startupTaint                                                          string
	manageContainerdConfig, uninstall, verify                                               bool
	resync, verifyInterval                                                                  time.Duration
}

func runAgent(ctx context.Context, args []string, stderr io.Writer) error {
	var f agentFlags
	if err := parseFlags(f.flagSet(stderr), args); err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return usageError{fmt.Errorf("agent: --log-level: %w", err)}
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level}))
	klog.SetSlogLogger(log.With("component", "client-go"))
	if err := f.check(); err != nil {
		return err
	}
	opts, err := agentOptions(f, log)
	if err != nil {
		return err
	}
	defer opts.Root.Close()
	a := agent.New(opts)
	lis, err := net.Listen("tcp", f.healthAddr)
	if err != nil {
		return usageError{fmt.Errorf("agent: --health-addr: %w", err)}
	}
	defer serveHealth(lis, a.Handler(), log)()
	log.Info("starting", "version", version, "commit", commit, "hostRoot", f.hostRoot, "healthAddr", lis.Addr().String(), "uninstall", f.uninstall)
	if f.uninstall {
		return a.Uninstall(ctx)
	}
	return a.Run(ctx)
}

// flagSet is the agent's flags, parsed into f.
func (f *agentFlags) flagSet(stderr io.Writer) *flag.FlagSet {
	fl := flag.NewFlagSet("agent", flag.ContinueOnError)
	fl.SetOutput(stderr)
	fl.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file; in-cluster config when empty")
	fl.StringVar(&f.nodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name")
	fl.StringVar(&f.namespaces, "namespaces", "", "comma-separated namespaces to read sources from (default: the pod's own, from $POD_NAMESPACE)")
	fl.StringVar(&f.hostRoot, "host-root", "/host", "root of the host filesystem")
	fl.StringVar(&f.healthAddr, "health-addr", ":9713", "address serving /healthz, /readyz and /metrics (on the node's network with the DaemonSet's hostNetwork: a port nothing common uses)")
	fl.DurationVar(&f.resync, "resync", 5*time.Minute, "period of a full sync without events")
	fl.StringVar(&f.sourceDir, "source-dir", "", "read sources from this manifest directory instead of the API")
	fl.StringVar(&f.nodeLabels, "node-labels", "", "with --source-dir: this node's labels (k=v,...) for node selectors")
	fl.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fl.StringVar(&f.restart, "restart", "auto", "auto: restart container runtimes after an OS trust store change; never: report \"restart pending\" instead")
	fl.IntVar(&f.maxRestarts, "max-concurrent-restarts", 1, "at most this many nodes restart their runtimes at once (coordination.k8s.io Leases)")
	fl.StringVar(&f.restartUnits, "restart-units", strings.Join(restart.DefaultUnits, ","), "systemd units restarted, those loaded on the node")
	fl.StringVar(&f.startupTaint, "startup-taint", "", "a taint key (such as nodetrust.io/agent-not-ready) removed from the Node after the first complete sync, so pods land on a new node only once its CAs are in place; register the node with it (kubelet --register-with-taints, Karpenter startupTaints)")
	fl.StringVar(&f.containerdConfig, "containerd-config", "", "containerd's main config file on the node (default: found from the layout: /etc/containerd/config.toml, k3s, RKE2, MicroK8s)")
	fl.BoolVar(&f.manageContainerdConfig, "manage-containerd-config", false, "set containerd's CRI registry config_path when it reads no hosts.toml (minimal edit, original restored on uninstall) and restart containerd under the restart limit")
	fl.BoolVar(&f.uninstall, "uninstall", false, "remove everything nodetrust wrote on the node and its Node annotations, then stay ready until stopped")
	fl.BoolVar(&f.verify, "verify", true, "check each registry of the applied sources as `nodetrust check` does, after every change and every --verify-interval; a registry whose TLS does not verify degrades the node (one that cannot be reached is logged and in the metric only)")
	fl.DurationVar(&f.verifyInterval, "verify-interval", agent.DefaultVerifyInterval, "with --verify: how often the registries are checked again when nothing changed")
	fl.StringVar(&f.systemdAddress, "systemd-address", "", "the host's system D-Bus (default: unix:path=HOST-ROOT/run/dbus/system_bus_socket)")
	return fl
}

// check rejects flag values out of range, as usage errors.
func (f agentFlags) check() error {
	switch {
	case f.restart != "auto" && f.restart != "never":
		return usageError{fmt.Errorf("agent: --restart must be auto or never, not %q", f.restart)}
	case f.maxRestarts < 1:
		return usageError{errors.New("agent: --max-concurrent-restarts must be at least 1")}
	case f.verifyInterval <= 0:
		return usageError{errors.New("agent: --verify-interval must be positive")}
	}
	return nil
}

// serveHealth serves h on lis until the returned stop is called, which
// shuts the server down within 5 s.
func serveHealth(lis net.Listener, h http.Handler, log *slog.Logger) (stop func()) {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("health server", "err", err)
		}
	}()
	return func() {
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}
}

// agentOptions builds the agent's inputs: a manifest directory, or the API.
func agentOptions(f agentFlags, log *slog.Logger) (agent.Options, error) {
	opts := agent.Options{Logger: log, Resync: f.resync, ManageContainerdConfig: f.manageContainerdConfig, ContainerdConfig: f.containerdConfig, StartupTaint: f.startupTaint}
	var err error
	if f.sourceDir != "" {
		opts.Inputs, err = dirInputs(f)
	} else {
		err = clusterOptions(f, &opts)
	}
	if err != nil {
		return opts, err
	}
	if opts.Restarts == nil {
		opts.Restarts = restarts(f)
	}
	root, err := hostfs.Open(f.hostRoot)
	if err != nil {
		return opts, usageError{fmt.Errorf("agent: --host-root: %w", err)}
	}
	opts.Root = root
	if f.verify && !f.uninstall {
		v := registryVerifier{root: root, config: f.containerdConfig}
		if rv, ok := opts.Inputs.(interface{ RuntimeVersion() string }); ok {
			v.version = rv.RuntimeVersion
		}
		opts.Verifier, opts.VerifyInterval = v, f.verifyInterval
	}
	return opts, nil
}

// dirInputs reads the sources from --source-dir, with --node-labels.
func dirInputs(f agentFlags) (*agent.Dir, error) {
	var nodeLabels labels.Set
	if f.nodeLabels != "" {
		set, err := labels.ConvertSelectorToLabelsMap(f.nodeLabels)
		if err != nil {
			return nil, usageError{fmt.Errorf("agent: --node-labels: %w", err)}
		}
		nodeLabels = set
	}
	return agent.NewDir(f.sourceDir, nodeLabels), nil
}

// clusterOptions sets the agent's inputs, publisher and restart slots to
// the Kubernetes API's.
func clusterOptions(f agentFlags, opts *agent.Options) error {
	if f.nodeLabels != "" {
		return usageError{errors.New("agent: --node-labels goes with --source-dir; with the API, the Node's labels apply")}
	}
	if f.nodeName == "" {
		return usageError{errors.New("agent: --node-name or $NODE_NAME is required")}
	}
	namespaces, err := agentNamespaces(f.namespaces)
	if err != nil {
		return err
	}
	cfg, err := kube.Config(f.kubeconfig)
	if err != nil {
		return usageError{fmt.Errorf("agent: kubernetes client config: %w", err)}
	}
	client, err := kube.New(cfg, "nodetrust/"+version)
	if err != nil {
		return err
	}
	k := cluster.New(client, f.nodeName, namespaces)
	opts.Inputs, opts.Publisher = k, k
	slotsNS := os.Getenv("POD_NAMESPACE")
	if slotsNS == "" {
		slotsNS = namespaces[0]
	}
	opts.Restarts = restarts(f)
	opts.Restarts.Slots = &lease.Slots{API: client, Namespace: slotsNS, Count: f.maxRestarts, Holder: f.nodeName}
	return nil
}

// registryVerifier verifies a registry with pkg/check on the host root.
type registryVerifier struct {
	root    *hostfs.Root
	config  string        // --containerd-config
	version func() string // the Node's container runtime version, when known
}

func (v registryVerifier) Verify(ctx context.Context, reg string) agent.Verification {
	opts := check.Options{ContainerdConfig: v.config}
	if v.version != nil {
		opts.ContainerdVersion, _ = strings.CutPrefix(v.version(), "containerd://")
		if !strings.HasPrefix(v.version(), "containerd://") {
			opts.ContainerdVersion = ""
		}
	}
	rep := check.Registry(ctx, v.root, reg, opts)
	return agent.Verification{Registry: reg, OK: rep.OK, Reason: rep.Problem(), LeafNotAfter: rep.LeafNotAfter(), Unreachable: rep.Unreachable()}
}

func agentNamespaces(flagValue string) ([]string, error) {
	v := flagValue
	if v == "" {
		v = os.Getenv("POD_NAMESPACE")
	}
	if v == "" {
		data, err := os.ReadFile(saNamespaceFile)
		if err != nil {
			return nil, usageError{errors.New("agent: --namespaces, $POD_NAMESPACE or a ServiceAccount namespace file is required")}
		}
		v = strings.TrimSpace(string(data))
	}
	var out []string
	for _, ns := range strings.Split(v, ",") {
		if ns = strings.TrimSpace(ns); ns != "" {
			out = append(out, ns)
		}
	}
	return out, nil
}

// restarts configures runtime restarts through the host's systemd.
func restarts(f agentFlags) *restart.Options {
	addr := f.systemdAddress
	if addr == "" {
		addr = "unix:path=" + filepath.Join(f.hostRoot, "run/dbus/system_bus_socket")
	}
	var units []string
	for _, u := range strings.Split(f.restartUnits, ",") {
		if u = strings.TrimSpace(u); u != "" {
			units = append(units, u)
		}
	}
	return &restart.Options{
		Never:         f.restart == "never",
		Units:         units,
		MaxConcurrent: f.maxRestarts,
		Systemd: func(ctx context.Context) (systemd.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			return systemd.Dial(ctx, addr)
		},
	}
}
