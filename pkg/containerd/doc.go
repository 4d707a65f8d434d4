// Package containerd is nodetrust's containerd policy: where a node's
// containerd reads hosts.toml files, what nodetrust writes there, and what
// keeps containerd from using it. It reads the host root through io/fs
// only (Root: os.DirFS or hostfs on a node, fstest.MapFS or a t.TempDir()
// in tests) and never writes: hostfs applies what it returns.
//
//   - node.go: Detect finds a node's containerd (its Layout and config,
//     read once) as a Node; ConfigEdit is the --manage-containerd-config
//     edit, Lookup what `nodetrust check` resolves against.
//   - check.go: ScanHosts finds the foreign hosts.toml files nodetrust adds
//     CAs to; Check judges, after an apply, what keeps containerd from
//     reading them (its config, read again only when the apply edited it).
//   - layout.go, config.go, lookup.go: the distribution layouts, the config
//     and its imports as containerd merges them, and containerd's own lookup
//     by version (Registry.Reading).
//   - hosts.go, hostsedit.go: render hosts.toml and merge CA files into one
//     somebody else wrote by minimal text edits (HostsMerger); edit.go sets
//     config_path the same way (ConfigMerger).
//   - resolve.go: the endpoints containerd tries for a registry.
//
// Hosts directory paths come from package certsd.
package containerd
