// Package systemd holds real-component tests of nodetrust's runtime
// restarts: it boots a real systemd (Debian bookworm, in systemd-nspawn),
// connects to that systemd's system bus from the host and restarts units
// inside it, first with pkg/systemd alone, then with the real agent binary
// (in --source-dir mode, and ten agents against a real kube-apiserver that
// hand out restart slots). See README.md.
//
// The package has no code of its own; everything is in the _test.go files.
package systemd
