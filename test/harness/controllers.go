package harness

import (
	"fmt"
	"path/filepath"
	"testing"
)

// StartComponent starts a control-plane process (log in c.Dir/NAME.log),
// stopped with c; its log's tail is printed when t has failed.
func (c *Cluster) StartComponent(t testing.TB, name, bin string, args ...string) {
	t.Helper()
	if err := needBinary(bin); err != nil {
		t.Fatal(err)
	}
	p, err := StartProc(name, filepath.Join(c.Dir, name+".log"), bin, args...)
	if err != nil {
		t.Fatal(err)
	}
	c.AddProc(p)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("---- %s log tail ----\n%s", name, p.Tail(4000))
		}
	})
}

// StartControllers adds kube-controller-manager (every controller a
// cluster without a cloud or node IPAM runs: DaemonSets, ReplicaSets, the
// root CA publisher for projected tokens) and kube-scheduler to c, both on
// free 127.0.0.1 ports with the admin kubeconfig.
func (c *Cluster) StartControllers(t testing.TB) {
	t.Helper()
	kc := c.AdminKubeconfig
	ports := make([]int, 2)
	for i := range ports {
		p, err := FreePort()
		if err != nil {
			t.Fatal(err)
		}
		ports[i] = p
	}
	c.StartComponent(t, "kube-controller-manager", K8sBin("kube-controller-manager"),
		"--kubeconfig="+kc,
		"--authentication-kubeconfig="+kc,
		"--authorization-kubeconfig="+kc,
		"--controllers=*,-nodeipam,-service-lb-controller,-cloud-node-lifecycle",
		"--leader-elect=false",
		"--bind-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", ports[0]),
		"--cert-dir="+filepath.Join(c.Dir, "kcm-certs"),
		"--service-account-private-key-file="+filepath.Join(c.Dir, "sa.key"),
		"--root-ca-file="+filepath.Join(c.Dir, "ca.crt"),
		"--use-service-account-credentials=false",
	)
	c.StartComponent(t, "kube-scheduler", K8sBin("kube-scheduler"),
		"--kubeconfig="+kc,
		"--authentication-kubeconfig="+kc,
		"--authorization-kubeconfig="+kc,
		"--leader-elect=false",
		"--bind-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", ports[1]),
		"--cert-dir="+filepath.Join(c.Dir, "scheduler-certs"),
	)
}
