module github.com/nodetrust/nodetrust/test/systemd

go 1.26.8

replace github.com/nodetrust/nodetrust => ../..

require (
	github.com/coreos/go-systemd/v22 v22.7.0
	github.com/nodetrust/nodetrust v0.0.0-00010101000000-000000000000
	github.com/stretchr/testify v1.12.1
)

require (
	github.com/godbus/dbus/v5 v5.1.0 // indirect
	go.yaml.in/yaml/v3 v3.0.5 // indirect
)
