// Package probe opens a TLS connection to a registry endpoint with exactly
// the trust a container runtime would use and classifies the outcome: the
// handshake verified, or one precise reason (unknown authority, name not
// covered, expired, incomplete chain, refused, timeout, DNS) with a hint.
// It sends no credentials: at most one unauthenticated GET /v2/.
package probe

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"
)

// Verdict is the kind of a probe's outcome.
type Verdict string

// The verdicts. Verified, SkipVerify and PlainHTTP are the ones a pull
// survives (see Verdict.OK).
const (
	Verified         Verdict = "verified"
	SkipVerify       Verdict = "skip-verify"
	PlainHTTP        Verdict = "plain-http"
	UnknownAuthority Verdict = "unknown-authority"
	NameNotCovered   Verdict = "name-not-covered"
	Expired          Verdict = "expired"
	NotYetValid      Verdict = "not-yet-valid"
	IncompleteChain  Verdict = "incomplete-chain"
	Refused          Verdict = "connection-refused"
	Timeout          Verdict = "timeout"
	DNS              Verdict = "dns-failure"
	TLSError         Verdict = "tls-error"
	Unreachable      Verdict = "unreachable"
)

// OK reports whether a pull through an endpoint with this verdict gets past
// TLS: verified, or not verified on purpose (skip_verify, plain http).
func (v Verdict) OK() bool { return v == Verified || v == SkipVerify || v == PlainHTTP }

// DefaultTimeout bounds each of resolution, connection and handshake.
const DefaultTimeout = 5 * time.Second

// Target is one endpoint and the trust to judge it with.
type Target struct {
	// Addr is the dial address, host:port.
	Addr string
	// ServerName is the name the certificate must cover (SNI too).
	ServerName string
	// CAs holds the PEM contents of the runtime's configured CA files.
	CAs [][]byte
	// System is the host's system bundle (PEM), added to the pool as the
	// runtimes do; nil for none.
	System []byte
	// SkipVerify is the runtime's skip_verify: the chain is still
	// classified but the handshake counts as passing.
	SkipVerify bool
	// PlainHTTP probes without TLS (an http:// endpoint).
	PlainHTTP bool
}

// Cert is one certificate of the serving chain, as reported.
type Cert struct {
	Subject   string    `json:"subject"`
	Issuer    string    `json:"issuer"`
	NotBefore time.Time `json:"notBefore"`
	NotAfter  time.Time `json:"notAfter"`
	DNSNames  []string  `json:"dnsNames,omitempty"`
	IPs       []string  `json:"ipAddresses,omitempty"`
}

// Result is the outcome of one probe.
type Result struct {
	Verdict Verdict `json:"verdict"`
	// Reason is one line saying what happened.
	Reason string `json:"reason"`
	// Hint says what would fix it, when known.
	Hint string `json:"hint,omitempty"`
	// Addresses are the addresses the name resolved to.
	Addresses []string `json:"addresses,omitempty"`
	// Chain is what the server sent, leaf first.
	Chain []Cert `json:"chain,omitempty"`
	// LeafNotAfter is the serving certificate's expiry (zero when no
	// certificate was seen).
	LeafNotAfter time.Time `json:"leafNotAfter,omitzero"`
	// V2Status is the HTTP status of the unauthenticated GET /v2/ after a
	// passing handshake (200 or 401 from a registry), 0 when not sent.
	V2Status int `json:"v2Status,omitempty"`
	// Took is the probe's duration.
	Took time.Duration `json:"tookNanos"`
}

// Resolver looks up a host name; *net.Resolver is one.
type Resolver interface {
	LookupHost(ctx context.Context, host string) ([]string, error)
}

// Dialer opens connections; *net.Dialer is one.
type Dialer interface {
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
}

// Prober probes targets, resolving names the node's way: its hosts file
// first, then DNS.
type Prober struct {
	// Hosts is the node's hosts file, parsed by ParseHosts.
	Hosts Hosts
	// Resolver is asked for names not in Hosts (default: Go's resolver).
	Resolver Resolver
	// Dialer connects (default: a net.Dialer).
	Dialer Dialer
	// Timeout bounds each step (default DefaultTimeout).
	Timeout time.Duration
	// Now is the clock certificates are judged by (default time.Now).
	Now func() time.Time
}

func (p *Prober) timeout() time.Duration {
	if p.Timeout > 0 {
		return p.Timeout
	}
	return DefaultTimeout
}

func (p *Prober) now() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
}

// Probe connects to t and classifies the result. It never returns an
// error: every failure is a verdict.
func (p *Prober) Probe(ctx context.Context, t Target) Result {
	start := time.Now()
	r := p.probe(ctx, t)
	r.Took = time.Since(start)
	return r
}

func (p *Prober) probe(ctx context.Context, t Target) Result {
	host, port, err := net.SplitHostPort(t.Addr)
	if err != nil {
		return Result{Verdict: Unreachable, Reason: fmt.Sprintf("bad address %q: %v", t.Addr, err)}
	}
	addrs, res := p.resolve(ctx, host)
	if res != nil {
		return *res
	}
	conn, res := p.dial(ctx, addrs, port)
	if res != nil {
		res.Addresses = addrs
		return *res
	}
	defer conn.Close()
	var r Result
	if t.PlainHTTP {
		r = Result{Verdict: PlainHTTP, Reason: "plain HTTP: no TLS, nothing to verify"}
		r.V2Status = p.getV2(conn, t)
	} else {
		r = p.handshake(ctx, conn, t)
	}
	r.Addresses = addrs
	return r
}

// resolve returns host's addresses: an IP literal itself, the hosts file's
// entries, else DNS.
func (p *Prober) resolve(ctx context.Context, host string) ([]string, *Result) {
	if ip := net.ParseIP(host); ip != nil {
		return []string{host}, nil
	}
	if a := p.Hosts.Lookup(host); len(a) > 0 {
		return a, nil
	}
	res := p.Resolver
	if res == nil {
		res = &net.Resolver{PreferGo: true}
	}
	ctx, cancel := context.WithTimeout(ctx, p.timeout())
	defer cancel()
	addrs, err := res.LookupHost(ctx, host)
	if err == nil && len(addrs) == 0 {
		err = &net.DNSError{Err: "no addresses", Name: host, IsNotFound: true}
	}
	if err != nil {
		return nil, dnsResult(host, err)
	}
	return addrs, nil
}

func dnsResult(host string, err error) *Result {
	server := "the system resolver"
	what := err.Error()
	var de *net.DNSError
	if errors.As(err, &de) {
		if de.Server != "" {
			server = "DNS server " + de.Server
		}
		what = de.Err
	}
	return &Result{
		Verdict: DNS,
		Reason:  fmt.Sprintf("cannot resolve %s: %s (not in the node's hosts file; asked %s)", host, what, server),
		Hint:    fmt.Sprintf("add %s to the node's DNS or /etc/hosts, or use the name the registry is published under", host),
	}
}

// dial connects to the first address that answers, like net.Dialer.
func (p *Prober) dial(ctx context.Context, addrs []string, port string) (net.Conn, *Result) {
	d := p.Dialer
	if d == nil {
		d = &net.Dialer{}
	}
	var last error
	var lastAddr string
	for _, a := range addrs {
		lastAddr = net.JoinHostPort(a, port)
		dctx, cancel := context.WithTimeout(ctx, p.timeout())
		conn, err := d.DialContext(dctx, "tcp", lastAddr)
		cancel()
		if err == nil {
			return conn, nil
		}
		last = err
	}
	switch {
	case errors.Is(last, syscall.ECONNREFUSED):
		return nil, &Result{Verdict: Refused, Reason: fmt.Sprintf("connection refused by %s", lastAddr),
			Hint: "nothing listens there: is the registry running, and on this port?"}
	case isTimeout(last):
		return nil, &Result{Verdict: Timeout, Reason: fmt.Sprintf("connecting to %s timed out after %s", lastAddr, p.timeout()),
			Hint: "a firewall or a wrong address: check the route from this node"}
	default:
		return nil, &Result{Verdict: Unreachable, Reason: fmt.Sprintf("connect %s: %v", lastAddr, last)}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// handshake completes TLS without Go's verification, then verifies the
// served chain itself, so a failure can be explained from the chain.
func (p *Prober) handshake(ctx context.Context, conn net.Conn, t Target) Result {
	tc := tls.Client(conn, &tls.Config{
		ServerName:         t.ServerName,
		InsecureSkipVerify: true, // verified below, against the same pool and name
		NextProtos:         []string{"http/1.1"},
	})
	hctx, cancel := context.WithTimeout(ctx, p.timeout())
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		if isTimeout(err) {
			return Result{Verdict: Timeout, Reason: fmt.Sprintf("TLS handshake with %s timed out after %s", t.Addr, p.timeout()),
				Hint: "something listens but does not answer TLS"}
		}
		return Result{Verdict: TLSError, Reason: fmt.Sprintf("TLS handshake with %s: %v", t.Addr, err),
			Hint: "is this port serving TLS? (an http:// endpoint needs server = \"http://…\" in hosts.toml)"}
	}
	served := tc.ConnectionState().PeerCertificates
	r := judge(served, t, p.now())
	r.Chain = describe(served)
	if len(served) > 0 {
		r.LeafNotAfter = served[0].NotAfter
	}
	if t.SkipVerify {
		if r.Verdict != Verified {
			r.Reason = "skip_verify is set, so this is not checked: " + r.Reason
		} else {
			r.Reason = "skip_verify is set (the chain would verify)"
		}
		r.Verdict, r.Hint = SkipVerify, ""
	}
	if r.Verdict.OK() {
		r.V2Status = p.getV2(tc, t)
	}
	return r
}

// getV2 sends one unauthenticated GET /v2/ and returns the status, 0 on
// any failure (the verdict is about TLS; this only shows a registry answers).
func (p *Prober) getV2(conn net.Conn, t Target) int {
	_ = conn.SetDeadline(time.Now().Add(p.timeout()))
	host := t.ServerName
	if _, port, err := net.SplitHostPort(t.Addr); err == nil && port != "443" && port != "80" {
		host = net.JoinHostPort(t.ServerName, port)
	}
	req, err := http.NewRequest(http.MethodGet, "/v2/", nil)
	if err != nil {
		return 0
	}
	req.Host = host
	req.Close = true
	req.Header.Set("User-Agent", "nodetrust-check")
	if err := req.Write(conn); err != nil {
		return 0
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func describe(chain []*x509.Certificate) []Cert {
	out := make([]Cert, 0, len(chain))
	for _, c := range chain {
		ips := make([]string, 0, len(c.IPAddresses))
		for _, ip := range c.IPAddresses {
			ips = append(ips, ip.String())
		}
		out = append(out, Cert{
			Subject: c.Subject.String(), Issuer: c.Issuer.String(),
			NotBefore: c.NotBefore.UTC(), NotAfter: c.NotAfter.UTC(),
			DNSNames: c.DNSNames, IPs: ips,
		})
	}
	return out
}

// names is a short description of a certificate's subjectAltNames.
func names(c *x509.Certificate) string {
	var n []string
	for _, d := range c.DNSNames {
		n = append(n, "DNS:"+d)
	}
	for _, ip := range c.IPAddresses {
		n = append(n, "IP:"+ip.String())
	}
	return strings.Join(n, ", ")
}
