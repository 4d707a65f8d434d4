// Package loaders holds black-box tests that judge the files written by
// `nodetrust apply` with the container runtimes' own certificate loaders:
// containerd v2 and v1.7 (hosts.toml), Docker/moby (certs.d/*.crt) and
// containers/image (CRI-O, podman, skopeo).
//
// The package has no non-test code; run `go test ./...` in this directory.
package loaders
