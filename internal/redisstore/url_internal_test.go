package redisstore

import (
	"net/url"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// parsed is what a test compares of a parsed store URL and the go-redis
// options made from it.
type parsed struct {
	Topology                   topology
	TLS                        bool
	Username, Password         string
	Hosts                      []string
	DB                         int
	Master                     string
	SentinelUser, SentinelPass string
	GoRedis                    url.Values // options left for go-redis
	MaxRetries                 int
	ServerName                 string
}

func parse(t *testing.T, rawURL string) parsed {
	t.Helper()
	u, err := parseURL(rawURL, "")
	if err != nil {
		t.Fatal(err)
	}
	p := parsed{Topology: u.topology, TLS: u.tls, Username: u.username, Password: u.password, Hosts: u.hosts, DB: u.db,
		Master: u.master, SentinelUser: u.sentinelUsername, SentinelPass: u.sentinelPassword, GoRedis: u.goredis}
	if len(p.GoRedis) == 0 {
		p.GoRedis = nil
	}
	if u.tlsConfig != nil {
		p.ServerName = u.tlsConfig.ServerName
	}
	// The options go-redis gets say the same.
	switch u.topology {
	case single:
		o, err := u.singleOptions()
		if err != nil {
			t.Fatal(err)
		}
		if o.Addr != u.hosts[0] || o.DB != u.db || o.Password != u.password || o.Username != u.username || (o.TLSConfig != nil) != u.tls {
			t.Errorf("go-redis options %+v", o)
		}
		p.MaxRetries = o.MaxRetries
	case sentinel:
		o, err := u.failoverOptions()
		if err != nil {
			t.Fatal(err)
		}
		if o.MasterName != u.master || !cmp.Equal(o.SentinelAddrs, u.hosts) || o.DB != u.db || o.Password != u.password ||
			o.SentinelPassword != u.sentinelPassword || (o.TLSConfig != nil) != u.tls {
			t.Errorf("go-redis options %+v", o)
		}
		p.MaxRetries = o.MaxRetries
	case cluster:
		o, err := u.clusterOptions()
		if err != nil {
			t.Fatal(err)
		}
		if !cmp.Equal(o.Addrs, u.hosts) || o.Password != u.password || (o.TLSConfig != nil) != u.tls {
			t.Errorf("go-redis options %+v", o)
		}
		p.MaxRetries = o.MaxRetries
	}
	return p
}

// TestParseURL: each form of the store URL, the credentials and hosts
// keyward reads itself, and the options left to go-redis.
func TestParseURL(t *testing.T) {
	tests := []struct {
		name, url string
		want      parsed
	}{
		{name: "one server, defaults", url: "redis://cache.internal",
			want: parsed{Topology: single, Hosts: []string{"cache.internal:6379"}, MaxRetries: -1}},
		{name: "one server, all parts", url: "redis://app:p%40ss@10.0.0.5:6380/2?pool_size=5",
			want: parsed{Topology: single, Username: "app", Password: "p@ss", Hosts: []string{"10.0.0.5:6380"}, DB: 2, GoRedis: url.Values{"pool_size": {"5"}}, MaxRetries: -1}},
		{name: "password with a slash and an at sign", url: "redis://:a/b@c@h/1",
			want: parsed{Topology: single, Password: "a/b@c", Hosts: []string{"h:6379"}, DB: 1, MaxRetries: -1}},
		{name: "IPv6", url: "redis://[::1]:7000",
			want: parsed{Topology: single, Hosts: []string{"[::1]:7000"}, MaxRetries: -1}},
		{name: "retries asked for", url: "redis://h?max_retries=2",
			want: parsed{Topology: single, Hosts: []string{"h:6379"}, GoRedis: url.Values{"max_retries": {"2"}}, MaxRetries: 2}},
		{name: "TLS", url: "rediss://:pw@h:6380",
			want: parsed{Topology: single, TLS: true, Password: "pw", Hosts: []string{"h:6380"}, MaxRetries: -1}},
		{name: "TLS with a server name", url: "rediss://10.0.0.5?server_name=redis.internal",
			want: parsed{Topology: single, TLS: true, Hosts: []string{"10.0.0.5:6379"}, ServerName: "redis.internal", MaxRetries: -1}},
		{name: "Sentinel", url: "redis-sentinel://:pw@s1,s2:26380,s3/mymaster/3",
			want: parsed{Topology: sentinel, Password: "pw", Hosts: []string{"s1:26379", "s2:26380", "s3:26379"}, DB: 3, Master: "mymaster", MaxRetries: -1}},
		{name: "Sentinel with its own credentials", url: "rediss-sentinel://app:pw@s1/m?sentinel_username=watch&sentinel_password=s%26p",
			want: parsed{Topology: sentinel, TLS: true, Username: "app", Password: "pw", Hosts: []string{"s1:26379"}, Master: "m", SentinelUser: "watch", SentinelPass: "s&p", MaxRetries: -1}},
		{name: "Cluster", url: "redis-cluster://:pw@n1:7000,n2:7001",
			want: parsed{Topology: cluster, Password: "pw", Hosts: []string{"n1:7000", "n2:7001"}, MaxRetries: -1}},
		{name: "Cluster over TLS", url: "rediss-cluster://n1",
			want: parsed{Topology: cluster, TLS: true, Hosts: []string{"n1:6379"}, MaxRetries: -1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, parse(t, tt.url), cmp.AllowUnexported(parsed{})); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// TestCheck: what keyward check says of a URL Open would refuse: what
// is wrong and what to write, and never the password (s3cret) nor the
// Sentinel's (s3ntinel), wherever a malformed URL puts them.
func TestCheck(t *testing.T) {
	tests := []struct {
		name, url string
		want      []string
	}{
		{name: "bad port", url: "redis://:s3cret@host:notaport/0", want: []string{"host 1: invalid port", "HOST:PORT", "1 to 65535"}},
		{name: "port of the second host", url: "redis-cluster://:s3cret@a:7000,b:70000", want: []string{"host 2: invalid port"}},
		{name: "no host but a password", url: "redis://:s3cret", want: []string{"invalid port"}},
		{name: "bad host", url: "redis://user:s3cret@[::1/0", want: []string{"missing ']'"}},
		{name: "IPv6 without brackets", url: "redis://:s3cret@::1", want: []string{"brackets"}},
		{name: "no host", url: "redis://:s3cret@/0", want: []string{"no host", "HOST[:PORT]"}},
		{name: "bad escape in the password", url: "redis://user:s3cret%zz@host/0", want: []string{"invalid percent-encoding"}},
		{name: "unescaped # in the password", url: "redis://:s3#cret@host/0", want: []string{"percent-encode", "%23"}},
		{name: "unescaped ? in the password", url: "redis://:s3?c@ret@host/0", want: []string{"percent-encode", "%3F"}},
		{name: "bad database", url: "redis://user:s3cret@host/x", want: []string{`invalid database number: "x"`}},
		{name: "bad scheme", url: "http://user:s3cret@host/0", want: []string{"invalid URL scheme", "rediss-cluster"}},
		{name: "not a URL", url: "s3cret", want: []string{"not a URL", "redis://"}},
		{name: "two hosts on redis://", url: "redis://:s3cret@a,b", want: []string{"redis-sentinel://", "redis-cluster://"}},
		{name: "Sentinel without a master", url: "redis-sentinel://:s3cret@s1:26379", want: []string{"no Sentinel master name", "/MASTER"}},
		{name: "database on a cluster", url: "redis-cluster://:s3cret@n1/1", want: []string{"database 0 only"}},
		{name: "password option", url: "redis://h?password=s3cret", want: []string{"user info", "SCHEME://:PASSWORD@HOST"}},
		{name: "reads from replicas", url: "redis-cluster://:s3cret@n1?read_only=true", want: []string{"masters only", "remove it"}},
		{name: "skip_verify", url: "rediss://h?skip_verify=true", want: []string{"cannot be turned off", "ca="}},
		{name: "ca without TLS", url: "redis://:s3cret@h?ca=/etc/ca.pem", want: []string{"need TLS", "rediss://"}},
		{name: "missing CA file", url: "rediss://:s3cret@h?ca=/nonexistent/ca.pem", want: []string{"reading the CA file (option ca)", "/nonexistent/ca.pem"}},
		{name: "cert without key", url: "rediss://:s3cret@h?cert=/c.pem", want: []string{"both options cert and key"}},
		{name: "sentinel_password on a server", url: "redis://h?sentinel_password=s3ntinel", want: []string{"options of redis-sentinel:// URLs"}},
		{name: "bad query", url: "redis-sentinel://s/m?sentinel_password=s3ntinel%zz", want: []string{"invalid query", "percent-encoded"}},
		{name: "unknown option", url: "redis://:s3cret@h?colour=blue", want: []string{"colour"}},
		{name: "bad go-redis option", url: "redis://:s3cret@h?dial_timeout=soon", want: []string{"dial_timeout"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Check(tt.url, "")
			if err == nil {
				t.Fatal("Check accepted a URL Open refuses")
			}
			for _, secret := range []string{"s3cret", "s3ntinel", "cret", "zz"} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("error %q quotes the password", err)
				}
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if _, oerr := Open(tt.url, ""); oerr == nil || oerr.Error() != err.Error() {
				t.Errorf("Open says %v, Check %v: want the same", oerr, err)
			}
		})
	}
}

func TestHashTag(t *testing.T) {
	for _, tt := range []struct{ prefix, want string }{
		{"keyward:ratelimit:", "{keyward:ratelimit:}"},
		{"{t1}:", "{t1}:"},
		{"a{b}c:", "a{b}c:"},
		{"a{}:", "{a{}:}"}, // an empty tag is no tag
		{"a{b:", "{a{b:}"}, // nor an unclosed one; the new one's text is "a{b:"
		{"}{x:", "{}{x:}"}, // a '}' before the first '{' ends nothing
		{"x:{", "{x:{}"},   // the tag is "x:{"
		{"", "{}"},         // never used: the stores default the prefix
	} {
		if got := HashTag(tt.prefix); got != tt.want {
			t.Errorf("HashTag(%q) = %q, want %q", tt.prefix, got, tt.want)
		}
	}
}

func TestDescribe(t *testing.T) {
	for i, tt := range []struct{ url, want string }{
		{"redis://:s3cret@cache:6380/2", "Redis at cache:6380/2"},
		{"rediss://u:s3cret@cache", "Redis at cache:6379/0 over TLS"},
		{"redis-sentinel://:s3cret@s1,s2/mymaster/1?sentinel_password=s3cret", "Redis master mymaster (database 1) through the Sentinels at s1:26379,s2:26379"},
		{"rediss-cluster://:s3cret@n1:7000,n2:7000?ca=/missing.pem", "Redis Cluster at n1:7000,n2:7000 over TLS"},
		{"redis://:s3cret@h:x", "Redis"},
	} {
		if got := Describe(tt.url); got != tt.want {
			t.Errorf("Describe of URL %d = %q, want %q", i, got, tt.want)
		}
	}
}
