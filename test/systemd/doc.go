// Package systemd holds a real-component test of nodetrust's pkg/systemd:
// it boots a real systemd (Debian bookworm, in systemd-nspawn), connects to
// that systemd's system bus from the host and restarts units inside it. See
// README.md.
//
// The package has no code of its own; everything is in the _test.go files.
package systemd
