package probe

import (
	"bufio"
	"bytes"
	"net"
	"strings"
)

// Hosts maps lower-case host names to addresses, from a hosts file.
type Hosts map[string][]string

// ParseHosts reads a hosts(5) file: "ADDRESS NAME [ALIAS...]" lines,
// comments after #. Lines whose address is not an IP are skipped.
func ParseHosts(data []byte) Hosts {
	h := Hosts{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		addr := f[0]
		if i := strings.IndexByte(addr, '%'); i >= 0 { // a zone, fe80::1%eth0
			addr = addr[:i]
		}
		if net.ParseIP(addr) == nil {
			continue
		}
		for _, name := range f[1:] {
			k := strings.ToLower(strings.TrimSuffix(name, "."))
			h[k] = append(h[k], f[0])
		}
	}
	return h
}

// Lookup returns host's addresses in file order, nil when it is not listed.
func (h Hosts) Lookup(host string) []string {
	return h[strings.ToLower(strings.TrimSuffix(host, "."))]
}
