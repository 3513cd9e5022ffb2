package redisstore

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// The store URL forms. Each has a TLS twin, its scheme with "rediss".
//
//	redis://[[USER]:PASSWORD@]HOST[:6379][/DB][?OPTIONS]
//	redis-sentinel://[[USER]:PASSWORD@]HOST[:26379][,HOST[:26379]...]/MASTER[/DB][?OPTIONS]
//	redis-cluster://[[USER]:PASSWORD@]HOST[:6379][,HOST[:6379]...][?OPTIONS]
//
// keyward reads the credentials, hosts and path itself and hands go-redis
// only the rest, so that no parser but this one ever holds the password
// (go-redis's and net/url's errors quote what they parse). Lettuce and
// Spring name Sentinel URLs the same way; go-redis's own failover URL
// (redis://SENTINEL?master_name=...&password=...) is not taken: its
// redis:// scheme would not say that the host is a Sentinel, and it puts
// the server password in the query.
const (
	schemeSingle   = "redis"
	schemeSentinel = "redis-sentinel"
	schemeCluster  = "redis-cluster"
)

// topology is the kind of deployment a store URL names.
type topology int

const (
	single topology = iota
	sentinel
	cluster
)

// defaultPorts are the ports a host without one gets, by topology.
var defaultPorts = [...]string{single: "6379", sentinel: "26379", cluster: "6379"}

// storeURL is a parsed store URL.
type storeURL struct {
	topology topology
	tls      bool
	username string
	password string
	hosts    []string // host:port, at least one
	db       int
	master   string // the Sentinel master name
	// goredis holds the query options go-redis parses (timeouts, pool),
	// keyward's own removed.
	goredis url.Values
	// maxRetries says whether the URL sets max_retries itself.
	maxRetries bool
	tlsConfig  *tls.Config // nil without TLS

	sentinelUsername, sentinelPassword string
}

// Keyward's own query options, which go-redis does not know.
const (
	optCA               = "ca"                // PEM file of the CAs that sign the servers' certificates
	optServerName       = "server_name"       // the name the servers' certificates are checked for
	optCert             = "cert"              // PEM file of a client certificate
	optKey              = "key"               // PEM file of its private key
	optSentinelUsername = "sentinel_username" // the Sentinels' own credentials, when they differ
	optSentinelPassword = "sentinel_password"
)

// refused are go-redis options that would give a second way to say what
// the URL already says, skip certificate checks, or send reads to
// replicas.
var refused = map[string]string{
	"password":    "put the password in the URL's user info: SCHEME://:PASSWORD@HOST",
	"username":    "put the user in the URL's user info: SCHEME://USER:PASSWORD@HOST",
	"addr":        "list the hosts separated by commas: SCHEME://HOST1:PORT,HOST2:PORT",
	"master_name": "name the Sentinel master in the path: redis-sentinel://HOST:26379/MASTER/DB",
	"db":          "name the database in the path",
	"skip_verify": "certificate checks cannot be turned off; give the CA with ca=/path/ca.pem",
	// Reads from replicas, which lag: an API key revoked on the master
	// would still be found, and a cache lock taken there missed.
	"read_only":        "keyward reads from masters only (a replica may lack a revocation); remove it",
	"route_by_latency": "keyward reads from masters only (a replica may lack a revocation); remove it",
	"route_randomly":   "keyward reads from masters only (a replica may lack a revocation); remove it",
	"replica_only":     "keyward reads from masters only (a replica may lack a revocation); remove it",
}

// parseURL parses a store URL and reads the TLS files it names, a
// relative path taken from dir. Its errors never quote the user info,
// nor the hosts, which hold the password when the URL is malformed
// enough (redis://:PASSWORD), nor sentinel_password.
func parseURL(rawURL, dir string) (*storeURL, error) {
	scheme, rest, ok := strings.Cut(rawURL, "://")
	if !ok {
		return nil, errors.New("not a URL: want redis://, rediss://, redis-sentinel://, rediss-sentinel://, redis-cluster:// or rediss-cluster://")
	}
	u := &storeURL{}
	base := scheme
	if s, ok := strings.CutPrefix(scheme, "rediss"); ok {
		u.tls, base = true, "redis"+s
	}
	switch base {
	case schemeSingle:
		u.topology = single
	case schemeSentinel:
		u.topology = sentinel
	case schemeCluster:
		u.topology = cluster
	default:
		return nil, fmt.Errorf("invalid URL scheme %q: want redis, rediss, redis-sentinel, rediss-sentinel, redis-cluster or rediss-cluster", scheme)
	}
	if i := strings.IndexAny(rest, "?#"); i >= 0 && strings.Contains(rest[i:], "@") {
		// Most likely a password with an unescaped '?' or '#', which
		// would otherwise end the user info early and be taken, and
		// quoted, as hosts or options.
		return nil, errors.New("'@' after a '?' or '#': percent-encode '?' (%3F), '#' (%23) and '@' (%40) in the password and in option values")
	}
	rest, _, _ = strings.Cut(rest, "#")
	rest, rawQuery, _ := strings.Cut(rest, "?")
	// The user info ends at the last '@', even when an unescaped '/' in
	// the password would end the authority before it for net/url.
	if i := strings.LastIndexByte(rest, '@'); i >= 0 {
		user, pass, hasPass := strings.Cut(rest[:i], ":")
		var err1, err2 error
		u.username, err1 = url.PathUnescape(user)
		if hasPass {
			u.password, err2 = url.PathUnescape(pass)
		}
		if err1 != nil || err2 != nil {
			return nil, errors.New("invalid percent-encoding in the user info")
		}
		rest = rest[i+1:]
	}
	hostList, path := rest, ""
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		hostList, path = rest[:i], rest[i:]
	}
	if err := u.parseHosts(hostList); err != nil {
		return nil, err
	}
	if err := u.parsePath(path); err != nil {
		return nil, err
	}
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		// url.ParseQuery's error quotes the query, which may hold
		// sentinel_password.
		return nil, errors.New("invalid query: want NAME=VALUE pairs separated by &, percent-encoded")
	}
	return u, u.parseQuery(q, dir)
}

// parseHosts reads the comma-separated host list. Its errors do not
// quote the hosts: a password with an unescaped '#' or '?' ends the URL's
// user info early, and the rest of it would be taken for a host.
func (u *storeURL) parseHosts(list string) error {
	if list == "" {
		return errors.New("no host: want HOST[:PORT]")
	}
	for i, h := range strings.Split(list, ",") {
		host, port := h, defaultPorts[u.topology]
		var err error
		switch {
		case strings.HasPrefix(h, "[") && !strings.Contains(h, "]"):
			err = errors.New("missing ']' in host")
		case strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]"):
			host = h[1 : len(h)-1]
		case strings.HasPrefix(h, "[") || strings.Count(h, ":") == 1:
			host, port, err = net.SplitHostPort(h)
		case strings.Contains(h, ":"):
			err = errors.New("an IPv6 address goes in brackets: [ADDRESS]:PORT")
		}
		if err != nil {
			var aerr *net.AddrError
			if errors.As(err, &aerr) {
				err = errors.New(aerr.Err) // without the address
			}
			return fmt.Errorf("host %d: %w", i+1, err)
		}
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			return fmt.Errorf("host %d: invalid port: write HOST:PORT with a port from 1 to 65535, or HOST alone for %s", i+1, defaultPorts[u.topology])
		}
		if host == "" || strings.ContainsAny(host, "/?#@ []") {
			return fmt.Errorf("host %d: invalid host name: write HOST[:PORT], an IPv6 address in brackets", i+1)
		}
		if u.topology == single && len(u.hosts) == 1 {
			return errors.New("redis:// names one server; list Sentinels with redis-sentinel:// or cluster nodes with redis-cluster://")
		}
		u.hosts = append(u.hosts, net.JoinHostPort(host, port))
	}
	return nil
}

// parsePath reads the database number, and the Sentinel master's name.
func (u *storeURL) parsePath(path string) error {
	parts := strings.FieldsFunc(path, func(r rune) bool { return r == '/' })
	if u.topology == sentinel {
		if len(parts) == 0 {
			return errors.New("no Sentinel master name: want redis-sentinel://HOST:26379/MASTER[/DB]")
		}
		name, err := url.PathUnescape(parts[0])
		if err != nil {
			return errors.New("invalid percent-encoding in the master name")
		}
		u.master, parts = name, parts[1:]
	}
	switch {
	case len(parts) > 1:
		return fmt.Errorf("invalid path %q: want /DB", path)
	case len(parts) == 1:
		n, err := strconv.Atoi(parts[0])
		if err != nil || n < 0 {
			return fmt.Errorf("invalid database number: %q", parts[0])
		}
		u.db = n
	}
	if u.topology == cluster && u.db != 0 {
		return errors.New("a Redis Cluster has database 0 only")
	}
	return nil
}

// parseQuery takes keyward's options out of q and keeps the rest for
// go-redis. A relative TLS file path is taken from dir.
func (u *storeURL) parseQuery(q url.Values, dir string) error {
	take := func(name string) string {
		v := q.Get(name)
		q.Del(name)
		return v
	}
	ca, serverName, cert, key := take(optCA), take(optServerName), take(optCert), take(optKey)
	u.sentinelUsername, u.sentinelPassword = take(optSentinelUsername), take(optSentinelPassword)
	if u.topology != sentinel && (u.sentinelUsername != "" || u.sentinelPassword != "") {
		return errors.New("sentinel_username and sentinel_password are options of redis-sentinel:// URLs")
	}
	for name := range q {
		if why, ok := refused[name]; ok {
			return fmt.Errorf("option %s: %s", name, why)
		}
	}
	u.goredis = q
	u.maxRetries = q.Has("max_retries")
	if !u.tls {
		if ca != "" || serverName != "" || cert != "" || key != "" {
			return errors.New("the options ca, server_name, cert and key need TLS: use a rediss scheme (rediss://, rediss-sentinel://, rediss-cluster://)")
		}
		return nil
	}
	in := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	c, err := tlsConfig(in(ca), serverName, in(cert), in(key))
	if err != nil {
		return err
	}
	u.tlsConfig = c
	return nil
}

// tlsConfig builds the client's TLS settings: TLS 1.2 at least, the
// servers' certificates checked against the CAs in the file ca (the
// system's when empty) for serverName or, when it is empty, for the host
// each connection dials (a URL's host, or a node or master as the
// cluster or the Sentinel names it: one name forced on every node would
// fail on clusters whose nodes have certificates of their own), and the
// client certificate cert with its key, when given. The files are read
// once, when the client is opened.
func tlsConfig(ca, serverName, cert, key string) (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName}
	if ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("reading the CA file (option ca): %w", err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("the CA file %s (option ca) holds no PEM certificate", ca)
		}
	}
	if (cert == "") != (key == "") {
		return nil, errors.New("a client certificate needs both options cert and key")
	}
	if cert != "" {
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return nil, fmt.Errorf("loading the client certificate (options cert and key): %w", err)
		}
		c.Certificates = []tls.Certificate{pair}
	}
	return c, nil
}

// goredisURL is the URL go-redis parses for its query options: the first
// host, the database and the options, and neither credentials nor
// keyward's options.
func (u *storeURL) goredisURL(extra url.Values) string {
	q := url.Values{}
	for k, v := range u.goredis {
		q[k] = v
	}
	for k, v := range extra {
		q[k] = v
	}
	s := "redis://" + u.hosts[0]
	if u.topology != cluster {
		s += "/" + strconv.Itoa(u.db)
	}
	if len(q) > 0 {
		s += "?" + q.Encode()
	}
	return s
}

// defaults gives the options of any topology, through pointers to its
// fields, the settings Open documents and the URL's credentials and
// TLS.
func (u *storeURL) defaults(contextTimeout *bool, dialTimeout, poolTimeout *time.Duration, dialerRetries, maxRetries *int, username, password *string, tlsConfig **tls.Config) {
	*contextTimeout = true
	if *dialTimeout == 0 {
		*dialTimeout = time.Second
	}
	if *poolTimeout == 0 {
		*poolTimeout = time.Second
	}
	if *dialerRetries == 0 {
		*dialerRetries = 1
	}
	if !u.maxRetries {
		// No retries: a command that failed on the network may still have
		// run, and a budget script run twice counts twice; and a refused
		// connection fails at once instead of after three tries, so a dead
		// Redis costs a request well under its store_timeout.
		*maxRetries = -1
	}
	*username, *password = u.username, u.password
	*tlsConfig = u.tlsConfig
}

// singleOptions returns the options of a one-server client.
func (u *storeURL) singleOptions() (*goredis.Options, error) {
	o, err := goredis.ParseURL(u.goredisURL(nil))
	if err != nil {
		return nil, redact(err)
	}
	u.defaults(&o.ContextTimeoutEnabled, &o.DialTimeout, &o.PoolTimeout, &o.DialerRetries, &o.MaxRetries, &o.Username, &o.Password, &o.TLSConfig)
	return o, nil
}

// failoverOptions returns the options of a Sentinel client.
func (u *storeURL) failoverOptions() (*goredis.FailoverOptions, error) {
	o, err := goredis.ParseFailoverURL(u.goredisURL(url.Values{"master_name": {u.master}, "addr": u.hosts[1:]}))
	if err != nil {
		return nil, redact(err)
	}
	u.defaults(&o.ContextTimeoutEnabled, &o.DialTimeout, &o.PoolTimeout, &o.DialerRetries, &o.MaxRetries, &o.Username, &o.Password, &o.TLSConfig)
	o.SentinelUsername, o.SentinelPassword = u.sentinelUsername, u.sentinelPassword
	return o, nil
}

// clusterOptions returns the options of a Cluster client.
func (u *storeURL) clusterOptions() (*goredis.ClusterOptions, error) {
	o, err := goredis.ParseClusterURL(u.goredisURL(url.Values{"addr": u.hosts[1:]}))
	if err != nil {
		return nil, redact(err)
	}
	u.defaults(&o.ContextTimeoutEnabled, &o.DialTimeout, &o.PoolTimeout, &o.DialerRetries, &o.MaxRetries, &o.Username, &o.Password, &o.TLSConfig)
	return o, nil
}
