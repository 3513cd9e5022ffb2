package secret

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const raw = "sk_live_CANARY_4f9a1c"

// holder has the shapes a Value is found in: a field, a pointer, a slice
// and a map, all exported so that encoders and fmt can reach their methods.
type holder struct {
	Name  string
	Token Value
	Ptr   *Value
	List  []Value
	ByKey map[string]Value
}

func newHolder() holder {
	v := New("github", raw)
	return holder{Name: "route", Token: v, Ptr: &v, List: []Value{v, v}, ByKey: map[string]Value{"a": v}}
}

func TestFormatVerbs(t *testing.T) {
	v := New("github", raw)
	h := newHolder()
	verbs := []string{
		"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%t", "%T",
		"%10s", "%-10v", "%.3s", "% x", "%#x", "%U", "%c", "%b", "%o", "%e", "%g",
	}
	values := []struct {
		name string
		v    any
	}{
		{"value", v},
		{"pointer", &v},
		{"struct", h},
		{"struct pointer", &h},
		{"slice", []Value{v}},
		{"map", map[string]Value{"k": v}},
		{"interface slice", []any{v, &v}},
	}
	for _, val := range values {
		for _, verb := range verbs {
			got := fmt.Sprintf(verb, val.v)
			if verb == "%T" {
				if strings.Contains(got, raw) {
					t.Errorf("%s: Sprintf(%q) = %q leaks", val.name, verb, got)
				}
				continue
			}
			if leaks(got) {
				t.Errorf("%s: Sprintf(%q) = %q leaks", val.name, verb, got)
			}
			if !strings.Contains(got, Redacted) && val.name != "pointer" {
				t.Errorf("%s: Sprintf(%q) = %q, want %s in it", val.name, verb, got, Redacted)
			}
		}
	}
	// Print, Println and an error wrapping a Value.
	for _, got := range []string{
		fmt.Sprint(v), fmt.Sprintln(v, h), fmt.Errorf("calling upstream with %v: %w", v, errors.New("x")).Error(),
		v.String(), v.GoString(),
	} {
		if leaks(got) || !strings.Contains(got, Redacted) {
			t.Errorf("output %q: want %s and no raw value", got, Redacted)
		}
	}
}

// leaks reports whether s holds the raw value in any common encoding.
func leaks(s string) bool {
	for _, enc := range []string{raw, fmt.Sprintf("%x", raw), fmt.Sprintf("%X", raw), fmt.Sprint([]byte(raw))} {
		if strings.Contains(s, enc) {
			return true
		}
	}
	return false
}

func TestSlog(t *testing.T) {
	v := New("github", raw)
	h := newHolder()
	handlers := []struct {
		name string
		new  func(*bytes.Buffer) slog.Handler
	}{
		{"json", func(b *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(b, nil) }},
		{"text", func(b *bytes.Buffer) slog.Handler { return slog.NewTextHandler(b, nil) }},
	}
	for _, hd := range handlers {
		t.Run(hd.name, func(t *testing.T) {
			var buf bytes.Buffer
			l := slog.New(hd.new(&buf))
			l.Info("attr", "token", v)
			l.Info("pointer", "token", &v)
			l.Info("any", slog.Any("token", v))
			l.Info("struct", "holder", h)
			l.Info("group", slog.Group("g", slog.Any("token", v)))
			l.With("token", v).Info("with")
			l.WithGroup("g").Info("with group", "token", v)
			l.Info("slice", "list", []Value{v})
			l.LogAttrs(t.Context(), slog.LevelError, "attrs", slog.Any("token", v))
			out := buf.String()
			if leaks(out) {
				t.Fatalf("log output leaks the secret:\n%s", out)
			}
			if n := strings.Count(out, Redacted); n < 9 {
				t.Errorf("want at least 9 %s in log output, got %d:\n%s", Redacted, n, out)
			}
		})
	}
}

func TestJSON(t *testing.T) {
	v := New("github", raw)
	h := newHolder()
	for _, x := range []any{v, &v, h, &h, []Value{v}, map[string]Value{"k": v}} {
		b, err := json.Marshal(x)
		if err != nil {
			t.Fatalf("json.Marshal(%T): %v", x, err)
		}
		if leaks(string(b)) || !strings.Contains(string(b), Redacted) {
			t.Errorf("json.Marshal(%T) = %s", x, b)
		}
	}
	b, err := json.Marshal(v)
	if err != nil || string(b) != `"[REDACTED]"` {
		t.Errorf("json.Marshal(Value) = %s, %v; want %q", b, err, `"[REDACTED]"`)
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	if err := enc.Encode(h); err != nil {
		t.Fatal(err)
	}
	if leaks(buf.String()) {
		t.Errorf("json.Encoder leaks: %s", buf.String())
	}
}

func TestText(t *testing.T) {
	v := New("github", raw)
	b, err := v.MarshalText()
	if err != nil || string(b) != Redacted {
		t.Errorf("MarshalText = %q, %v", b, err)
	}
	type doc struct{ Token Value }
	x, err := xml.Marshal(doc{v})
	if err != nil {
		t.Fatal(err)
	}
	if leaks(string(x)) || !strings.Contains(string(x), Redacted) {
		t.Errorf("xml.Marshal = %s", x)
	}
}

func TestRevealAndName(t *testing.T) {
	v := New("github", raw)
	if v.Reveal() != raw {
		t.Errorf("Reveal() = %q", v.Reveal())
	}
	if v.Name() != "github" {
		t.Errorf("Name() = %q", v.Name())
	}
	if v.Len() != len(raw) {
		t.Errorf("Len() = %d, want %d", v.Len(), len(raw))
	}
	var zero Value
	if zero.Reveal() != "" || fmt.Sprint(zero) != Redacted {
		t.Errorf("zero Value: Reveal %q, Sprint %q", zero.Reveal(), fmt.Sprint(zero))
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	env := map[string]string{"TOKEN": raw, "EMPTY": ""}
	getenv := func(k string) string { return env[k] }
	tests := []struct {
		name    string
		src     Source
		want    string
		wantErr string
		wantIs  error
	}{
		{name: "env", src: Source{Env: "TOKEN"}, want: raw},
		{name: "env unset", src: Source{Env: "NOPE"}, wantErr: "NOPE is unset or empty"},
		{name: "env empty", src: Source{Env: "EMPTY"}, wantErr: "EMPTY is unset or empty"},
		{name: "file", src: Source{File: write("plain", raw)}, want: raw},
		{name: "file trailing newline", src: Source{File: write("nl", raw+"\n")}, want: raw},
		{name: "file trailing crlf", src: Source{File: write("crlf", raw+"\r\n")}, want: raw},
		{name: "file keeps inner newline", src: Source{File: write("two", "a\nb\n")}, want: "a\nb"},
		{name: "file trailing blank line", src: Source{File: write("nn", raw+"\n\n")}, wantIs: ErrTrailingSpace},
		{name: "file trailing crlf blank line", src: Source{File: write("crlfcrlf", raw+"\r\n\r\n")}, wantIs: ErrTrailingSpace},
		{name: "file trailing space", src: Source{File: write("sp", raw+" \n")}, wantIs: ErrTrailingSpace},
		{name: "file only blank lines", src: Source{File: write("blank", "\n\n \n")}, wantIs: ErrEmpty},
		{name: "file empty", src: Source{File: write("empty", "")}, wantIs: ErrEmpty},
		{name: "file only newline", src: Source{File: write("onlynl", "\n")}, wantIs: ErrEmpty},
		{name: "file missing", src: Source{File: filepath.Join(dir, "missing")}, wantIs: os.ErrNotExist},
		{name: "no source", src: Source{}, wantErr: "no source"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := Load("gh", tt.src, getenv)
			if tt.wantErr != "" || tt.wantIs != nil {
				if err == nil {
					t.Fatalf("Load = %v, want an error", v)
				}
				if tt.wantErr != "" && !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("error %q does not contain %q", err, tt.wantErr)
				}
				if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
					t.Errorf("error %v is not %v", err, tt.wantIs)
				}
				if leaks(err.Error()) {
					t.Errorf("error %q leaks the secret", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if v.Reveal() != tt.want || v.Name() != "gh" {
				t.Errorf("Load = %q named %q, want %q named gh", v.Reveal(), v.Name(), tt.want)
			}
		})
	}
}

// TestReflectionPaths covers what fmt prints without calling Value's
// methods: a Value held in an unexported struct field (slog's text handler
// goes through fmt too), and %p, which fmt handles before any Formatter.
// Both print the raw value unless it sits behind a pointer.
func TestReflectionPaths(t *testing.T) {
	v := New("github", raw)
	if got := fmt.Sprintf("%p", v); leaks(got) {
		t.Errorf("Sprintf(%%p, Value) = %q leaks", got)
	}
	type private struct{ v Value }
	p := private{v}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		if got := fmt.Sprintf(verb, p); leaks(got) {
			t.Errorf("Sprintf(%q, struct{v Value}) = %q leaks", verb, got)
		}
	}
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("m", "p", p)
	if leaks(buf.String()) {
		t.Errorf("slog text handler leaks: %s", buf.String())
	}
}
