// Package registry validates the registry names that sources list in the
// nodetrust.io/registries annotation.
//
// A registry name becomes a directory name on the host (certs.d/<name>), so
// validation is the gate between user input and the filesystem: only a DNS
// name, an IPv4 address or a bracketed IPv6 address, each with an optional
// port, ever passes.
package registry

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"unicode"
)

// maxLen bounds a registry name; DNS names are at most 253 bytes, plus a port.
const maxLen = 253 + len(":65535")

// Host is a validated registry name, exactly as written in image references
// ("registry.example.com:5000", "10.0.0.7:5000", "[fd00::1]:5000", "harbor.local").
type Host string

// Hostname returns the host part without port or IPv6 brackets, as used for
// certificate name checks.
func (h Host) Hostname() string {
	host, _ := splitPort(string(h))
	return strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
}

// Parse validates one registry name and returns it unchanged as a Host.
func Parse(s string) (Host, error) {
	if err := validate(s); err != nil {
		return "", fmt.Errorf("registry %q: %w", s, err)
	}
	return Host(s), nil
}

// ParseList parses a comma-separated list; spaces around entries are ignored.
// Duplicates are dropped and the order of first appearance is kept.
func ParseList(s string) ([]Host, error) {
	var hosts []Host
	seen := map[Host]bool{}
	for _, entry := range strings.Split(s, ",") {
		h, err := Parse(strings.TrimSpace(entry))
		if err != nil {
			return nil, err
		}
		if !seen[h] {
			seen[h] = true
			hosts = append(hosts, h)
		}
	}
	return hosts, nil
}

func validate(s string) error {
	switch {
	case s == "":
		return errors.New("empty entry")
	case len(s) > maxLen:
		return fmt.Errorf("longer than %d characters", maxLen)
	case strings.Contains(s, "://"):
		return errors.New("must not include a scheme; write host or host:port")
	case strings.ContainsAny(s, `/\`):
		return errors.New("must not contain a path or slash")
	case strings.Contains(s, ".."):
		return errors.New(`must not contain ".."`)
	case strings.Contains(s, "@"):
		return errors.New(`must not contain "@"`)
	case strings.IndexFunc(s, unicode.IsSpace) >= 0:
		return errors.New("must not contain whitespace")
	}
	host, port := splitPort(s)
	if port != nil {
		if err := validatePort(*port); err != nil {
			return err
		}
	}
	return validateHost(host)
}

// splitPort splits "host:port" and "[v6]:port". port is nil when absent.
// An unbracketed IPv6 address has several colons and is returned whole as
// the host, so validateHost rejects it with a precise message.
func splitPort(s string) (host string, port *string) {
	if strings.HasPrefix(s, "[") {
		end := strings.Index(s, "]")
		if end < 0 || end == len(s)-1 {
			return s, nil
		}
		if s[end+1] != ':' {
			return s, nil
		}
		p := s[end+2:]
		return s[:end+1], &p
	}
	if strings.Count(s, ":") != 1 {
		return s, nil
	}
	i := strings.IndexByte(s, ':')
	p := s[i+1:]
	return s[:i], &p
}

func validatePort(p string) error {
	if p == "" {
		return errors.New("empty port")
	}
	for _, c := range p {
		if c < '0' || c > '9' {
			return fmt.Errorf("port %q is not a number", p)
		}
	}
	n, err := strconv.Atoi(p)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q is outside 1-65535", p)
	}
	if p[0] == '0' {
		return fmt.Errorf("port %q has a leading zero; image references spell a port without one: write %d", p, n)
	}
	return nil
}

func validateHost(h string) error {
	if h == "" {
		return errors.New("empty host")
	}
	if strings.HasPrefix(h, "[") {
		if !strings.HasSuffix(h, "]") {
			return errors.New("unterminated IPv6 bracket, or text after it other than :port")
		}
		addr, err := netip.ParseAddr(h[1 : len(h)-1])
		if err != nil || !addr.Is6() || addr.Zone() != "" {
			return fmt.Errorf("%s is not a valid bracketed IPv6 address", h)
		}
		return nil
	}
	if strings.Contains(h, ":") {
		return errors.New("an IPv6 address must be bracketed, as in [fd00::1]:5000")
	}
	if addr, err := netip.ParseAddr(h); err == nil && addr.Is4() {
		return nil
	}
	return validateDNSName(h)
}

// validateDNSName follows the domain grammar of container image references:
// dot-separated labels of letters, digits and inner hyphens.
func validateDNSName(h string) error {
	for _, label := range strings.Split(h, ".") {
		if label == "" {
			return fmt.Errorf("host %q has an empty label", h)
		}
		if len(label) > 63 {
			return fmt.Errorf("host %q has a label longer than 63 characters", h)
		}
		for i, c := range label {
			alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
			inner := c == '-' && i > 0 && i < len(label)-1
			if !alnum && !inner {
				return fmt.Errorf("host %q has invalid character %q", h, c)
			}
		}
	}
	if isAllDigitsAndDots(h) {
		return fmt.Errorf("host %q is not a valid IPv4 address", h)
	}
	return nil
}

func isAllDigitsAndDots(h string) bool {
	return strings.Trim(h, "0123456789.") == ""
}
