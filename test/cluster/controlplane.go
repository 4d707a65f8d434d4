package cluster

import (
	"fmt"
	"path/filepath"
	"testing"
)

// StartControlPlane adds kube-controller-manager, kube-scheduler and kwok
// (managing Nodes annotated kwok.x-k8s.io/node=fake) to c.
func StartControlPlane(t testing.TB, c *Cluster) {
	t.Helper()
	for _, b := range []string{K8sBin("kube-controller-manager"), K8sBin("kube-scheduler"), KwokBin()} {
		if err := needBinary(b); err != nil {
			t.Fatal(err)
		}
	}
	kc := c.AdminKubeconfig
	ports := make([]int, 3)
	for i := range ports {
		p, err := FreePort()
		if err != nil {
			t.Fatal(err)
		}
		ports[i] = p
	}
	start := func(name, bin string, args ...string) {
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
	start("kube-controller-manager", K8sBin("kube-controller-manager"),
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
	start("kube-scheduler", K8sBin("kube-scheduler"),
		"--kubeconfig="+kc,
		"--authentication-kubeconfig="+kc,
		"--authorization-kubeconfig="+kc,
		"--leader-elect=false",
		"--bind-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", ports[1]),
		"--cert-dir="+filepath.Join(c.Dir, "scheduler-certs"),
	)
	start("kwok", KwokBin(),
		"--kubeconfig="+kc,
		"--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
		"--cidr=10.0.0.1/24",
		"--node-ip=10.0.0.1",
		"--node-lease-duration-seconds=40",
		fmt.Sprintf("--server-address=127.0.0.1:%d", ports[2]),
	)
}
