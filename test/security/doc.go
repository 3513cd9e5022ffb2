// Package security holds keyward's security tests: each attack or fault a
// reviewer asks about, run end to end against a real gateway in front of a
// recording upstream (internal/gatewaytest).
//
// The tests are organised by threat class, one file each:
//
//   - paths_test.go: dot segments in every encoding, encoded slashes and
//     backslashes, empty segments, ";" parameters, case, trailing slashes,
//     control characters, very long paths, parameters that try to add a
//     query, a fragment or another host, rest parameters that climb;
//   - query_test.go: overriding or duplicating a parameter the gateway
//     sets (case, brackets, encoded names, spaces), ";" separators,
//     parameter pollution, invalid escapes, huge queries;
//   - headers_test.go: client credentials and forwarding headers, the
//     "Connection: <header>" trick, Host and rewrite headers, header
//     injection through parameters, Upgrade and h2c;
//   - framing_test.go: request smuggling and odd request lines over raw
//     TCP (Content-Length with Transfer-Encoding, conflicting lengths,
//     obs-fold, underscores, CONNECT, TRACE, "OPTIONS *", absolute form);
//   - responses_test.go: upstream cookies, CORS and Alt-Svc headers,
//     redirects (never followed, Location scrubbed), trailers, 1xx;
//   - echo_test.go: an upstream that echoes the whole request back, plain,
//     gzip, deflate, split across reads, as an event stream, for HEAD;
//   - cors_test.go: origin matching (null, suffix and prefix confusion,
//     scheme, port, case) and preflights;
//   - faults_test.go: upstreams that hang, stall, reset, send huge headers
//     or bodies, clients that go away, the outbound address policy;
//   - scrub_oracle_test.go, scrub_spellings_test.go: the stream's shape
//     never depends on secret content; every spelling of a secret is
//     masked;
//   - upstream_pool_test.go: unsolicited upstream bytes never answer
//     another client's request;
//   - cache_variants_test.go, cache_store_test.go: everything sent
//     upstream keys the cache; what must not be stored is not;
//   - bodies_test.go, clientbody_test.go: bodies keyward cannot parse are
//     refused; client body faults are client errors;
//   - spend_test.go: budgets count only what goes upstream, other origins
//     never reach it, IPv6 allocations cannot multiply an allowance;
//   - server_writetimeout_test.go, faults_logged_test.go: clients that stop
//     reading are cut off; upstream breaks are logged as such;
//   - load_*_test.go: a full connection table admits new clients, server
//     settings apply on reload, a shutdown ends streams cleanly, buffered
//     bodies are bounded, oversize uploads never reach a metered upstream;
//   - cache_faults_test.go: stale_if_error covers every upstream failure,
//     the cache survives a Redis outage;
//   - callers_test.go: routes with callers refuse requests that prove none,
//     never forward a credential, and limit per caller;
//   - fuzz_test.go: FuzzGatewayRequest, whose invariants hold for any path,
//     query and header a client can send.
//
// Every case asserts both what the client got and what the upstream
// received (or that it received nothing), and every test ends with the
// harness's canary scan over every response, log line and metric.
// docs/SECURITY.md maps each guarantee to the tests that prove it.
package security
