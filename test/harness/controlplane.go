package harness

import (
	"fmt"
	"testing"
)

// StartControlPlane adds kube-controller-manager, kube-scheduler and kwok
// (managing Nodes annotated kwok.x-k8s.io/node=fake) to c.
func StartControlPlane(t testing.TB, c *Cluster) {
	t.Helper()
	c.StartControllers(t)
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	c.StartComponent(t, "kwok", KwokBin(),
		"--kubeconfig="+c.AdminKubeconfig,
		"--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
		"--cidr=10.0.0.1/24",
		"--node-ip=10.0.0.1",
		"--node-lease-duration-seconds=40",
		fmt.Sprintf("--server-address=127.0.0.1:%d", port),
	)
}
