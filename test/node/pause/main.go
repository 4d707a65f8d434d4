// Command pause is the node suite's sandbox (pause) image and its workload
// image: PID 1 of a pod that does nothing but wait for SIGTERM or SIGINT, as
// the kubelet's and containerd's sandbox image does. test/node packs it with
// tools/image (no Docker, no base image); being static, it runs on any node.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
}
