package gateway

import (
	"errors"
	"net/url"
	"strings"
)

// outboundQuery builds the upstream query: the template's literal query,
// then allowed client parameters in their order, then the gateway's own.
// A client parameter whose name collides with a set one in any spelling
// is dropped, so the gateway's value is the only one the upstream sees.
// dropped counts the client's parameters that were left out (not allowed,
// or set by the gateway), for the access log.
func (ep *endpoint) outboundQuery(raw string, param func(string) string) (q string, dropped int, err error) {
	if raw == "" && len(ep.querySet) == 0 {
		return ep.upstream.RawQuery, 0, nil
	}
	var b strings.Builder
	b.WriteString(ep.upstream.RawQuery)
	for raw != "" {
		var pair string
		pair, raw, _ = strings.Cut(raw, "&")
		if pair == "" {
			continue
		}
		if strings.ContainsAny(pair, ";") {
			// Some servers split on ";" too; refuse rather than guess.
			return "", 0, errors.New("query contains ';'")
		}
		rawName, rawValue, _ := strings.Cut(pair, "=")
		name, err := url.QueryUnescape(rawName)
		if err != nil {
			return "", 0, errors.New("query parameter name is not validly encoded")
		}
		if !ep.queryAllow[name] || ep.isSetParam(name) {
			dropped++
			continue
		}
		value, err := url.QueryUnescape(rawValue)
		if err != nil {
			return "", 0, errors.New("query parameter " + quoteName(name) + " is not validly encoded")
		}
		if b.Len() > 0 {
			b.WriteByte('&')
		}
		b.WriteString(url.QueryEscape(name))
		b.WriteByte('=')
		b.WriteString(url.QueryEscape(value))
	}
	for i := range ep.querySet {
		qs := &ep.querySet[i]
		if b.Len() > 0 {
			b.WriteByte('&')
		}
		b.WriteString(url.QueryEscape(qs.name))
		b.WriteByte('=')
		b.WriteString(url.QueryEscape(string(qs.value.Expand(nil, param, nil))))
	}
	return b.String(), dropped, nil
}

func (ep *endpoint) isSetParam(name string) bool {
	if len(ep.querySet) == 0 {
		return false
	}
	k := queryKey(name)
	for i := range ep.querySet {
		if ep.querySet[i].key == k {
			return true
		}
	}
	return false
}

// quoteName quotes a client-supplied name for an error message, cut short
// so an error can't be used to reflect large input.
func quoteName(s string) string {
	if len(s) > 64 {
		s = s[:64] + "..."
	}
	return `"` + strings.ToValidUTF8(s, "?") + `"`
}
