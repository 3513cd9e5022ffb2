package config

import (
	"errors"
	"testing"
)

// FuzzParse: Parse never panics on arbitrary bytes, every problem it
// reports is a *Error (alone or joined) with a sane line, and Line never
// panics on a parsed file.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		sample,
		"",
		"listen: \":8080\"\nroutes: []\n",
		"lisen: x\nroutes:\n  - name: a\n    methdos: [GET]\n",
		"a: &x {b: 1}\nroutes: *x\n",
		"routes:\n  - &r {name: a, path: /a}\n  - *r\n",
		"routes:\n  - <<: {name: a}\n    path: /a\n",
		"!!map {listen: x}\n",
		"listen: !!binary aGVsbG8=\n",
		"---\n---\nlisten: x\n",
		"routes: {name: a}\n",
		"secrets:\n  gh: [env, x]\n",
		"server:\n  max_header_bytes: 99999999999999999999999\n",
		"\t- x\n",
		"{{{{",
		"routes:\n  - name: a\n    params: {owner: '[a-z'}\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := Parse("fuzz.yaml", data)
		if err != nil {
			if file != nil {
				t.Fatalf("Parse returned both a file and an error: %v", err)
			}
			checkErrors(t, err)
			return
		}
		if file == nil {
			t.Fatal("Parse returned neither a file nor an error")
		}
		if len(file.Unknown) > 0 {
			checkErrors(t, errors.Join(file.Unknown...))
		}
		for _, p := range []string{"", "listen", "routes", "routes[0]", "routes[0].path", "routes[1].headers.set.X",
			"secrets.a.env", "stages.dev.vars.x", "routes[-1]", "routes[99999999999999999999]", "[0]", "a..b", "routes[0][1]"} {
			if l := file.Line(p); l < 0 {
				t.Fatalf("Line(%q) = %d", p, l)
			}
		}
		_ = file.Errorf("routes[0].name", "x %d", 1).Error()
	})
}

func checkErrors(t *testing.T, err error) {
	t.Helper()
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			checkErrors(t, e)
		}
		return
	}
	ce, ok := err.(*Error)
	if !ok {
		t.Fatalf("error %v is a %T, want *config.Error", err, err)
	}
	if ce.Line < 0 || ce.File != "fuzz.yaml" || ce.Msg == "" {
		t.Fatalf("bad error %+v", ce)
	}
	_ = ce.Error()
}
