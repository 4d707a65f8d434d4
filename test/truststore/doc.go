// Package truststore holds a real-component test of nodetrust's host trust
// store support: `nodetrust apply --host-root ROOT` against a real,
// debootstrapped Debian bookworm root, checked with the root's own
// update-ca-certificates output, openssl and curl. See README.md.
//
// The package has no code of its own; everything is in the _test.go files.
package truststore
