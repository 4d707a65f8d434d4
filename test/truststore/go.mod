module github.com/nodetrust/nodetrust/test/truststore

go 1.26.8
