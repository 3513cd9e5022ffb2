package validate

import (
	"errors"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/keyward/keyward/internal/config"
)

func num(f float64) *float64 { return &f }

// contactConfig is a contact form's validate block (testdata/schemas) plus
// query and header rules, so one config exercises every kind of rule.
func contactConfig() config.Validate {
	return config.Validate{
		Query: map[string]config.ParamRule{
			"page":  {Type: "integer", Min: num(1), Max: num(100)},
			"ratio": {Type: "number", Max: num(1)},
			"draft": {Type: "boolean"},
			"sort":  {Enum: []any{"created", "updated"}},
			"size":  {Type: "integer", Enum: []any{10, "20"}},
			"q":     {Min: num(2), Max: num(5)},
			"lang":  {Pattern: "^[a-z]{2}$", Required: true},
			"tag":   {Multiple: true, Max: num(3)},
		},
		Headers: map[string]config.ParamRule{
			"x-request-id": {Pattern: "^[0-9a-f]{8}$"},
		},
		Body:         "schemas/contact.json",
		MaxBodyBytes: 200,
	}
}

func TestCheck(t *testing.T) {
	v, err := Compile(contactConfig(), "testdata")
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	const good = `{"email":"a@example.com","message":"hi"}`
	tests := []struct {
		name   string
		query  string
		header http.Header
		ctype  string
		body   string
		want   []Violation
	}{
		{name: "valid", query: "lang=en&page=3&tag=a&tag=b", ctype: "application/json", body: good},
		{name: "valid json with charset", query: "lang=en", ctype: "application/json; charset=utf-8", body: good},
		{name: "valid +json type", query: "lang=en", ctype: "application/vnd.api+json", body: good},
		{name: "valid header", query: "lang=en", header: http.Header{"X-Request-Id": {"0badf00d"}}, ctype: "application/json", body: good},
		{
			name: "query required", query: "", ctype: "application/json", body: good,
			want: []Violation{{In: "query", Path: "lang", Message: "is required", Code: CodeInvalid}},
		},
		{
			name: "query pattern", query: "lang=english", ctype: "application/json", body: good,
			want: []Violation{{In: "query", Path: "lang", Message: "must match pattern ^[a-z]{2}$", Code: CodeInvalid}},
		},
		{
			name: "query integer type", query: "lang=en&page=2.5", ctype: "application/json", body: good,
			want: []Violation{{In: "query", Path: "page", Message: "must be an integer", Code: CodeInvalid}},
		},
		{
			name: "query integer not a number", query: "lang=en&page=abc", ctype: "application/json", body: good,
			want: []Violation{{In: "query", Path: "page", Message: "must be an integer", Code: CodeInvalid}},
		},
		{
			name: "query minimum", query: "lang=en&page=0", ctype: "application/json", body: good,
			want: []Violation{{In: "query", Path: "page", Message: "must be at least 1", Code: CodeInvalid}},
		},
		{
			name: "query maximum", query: "lang=en&page=101", ctype: "application/json", body: good,
			want: []Violation{{In: "query", Path: "page", Message: "must be at most 100", Code: CodeInvalid}},
		},
		{
			name: "query number type", query: "lang=en&ratio=NaN", ctype: "application/json", body: good,
			want: []Violation{{In: "query", Path: "ratio", Message: "must be a number", Code: CodeInvalid}},
		},
		{
			name: "query number maximum", query: "lang=en&ratio=1.5", ctype: "application/json", body: good,
			want: []Violation{{In: "query", Path: "ratio", Message: "must be at most 1", Code: CodeInvalid}},
		},
		{
			name: "query boolean", query: "lang=en&draft=yes", ctype: "application/json", body: good,
			want: []Violation{{In: "query", Path: "draft", Message: "must be true or false", Code: CodeInvalid}},
		},
		{
			name: "query string enum", query: "lang=en&sort=name", ctype: "application/json", body: good,
			want: []Violation{{In: "query", Path: "sort", Message: `must be one of "created", "updated"`, Code: CodeInvalid}},
		},
		{
			name: "query integer enum", query: "lang=en&size=15", ctype: "application/json", body: good,
			want: []Violation{{In: "query", Path: "size", Message: "must be one of 10, 20", Code: CodeInvalid}},
		},
		{name: "query integer enum matches numerically", query: "lang=en&size=020", ctype: "application/json", body: good},
		{
			name: "query string too short", query: "lang=en&q=a", ctype: "application/json", body: good,
			want: []Violation{{In: "query", Path: "q", Message: "must be at least 2 characters long", Code: CodeInvalid}},
		},
		{
			name: "query string length counts characters", query: "lang=en&q=" + url.QueryEscape("ééééé"), ctype: "application/json", body: good,
		},
		{
			name: "query string too long", query: "lang=en&q=abcdef", ctype: "application/json", body: good,
			want: []Violation{{In: "query", Path: "q", Message: "must be at most 5 characters long", Code: CodeInvalid}},
		},
		{
			name: "query repeated", query: "lang=en&lang=fr", ctype: "application/json", body: good,
			want: []Violation{{In: "query", Path: "lang", Message: "must be given once, got 2 values", Code: CodeInvalid}},
		},
		{
			name: "query multiple checks each value", query: "lang=en&tag=ab&tag=abcd", ctype: "application/json", body: good,
			want: []Violation{{In: "query", Path: "tag", Message: "must be at most 3 characters long", Code: CodeInvalid}},
		},
		{
			name: "header pattern", query: "lang=en", header: http.Header{"X-Request-Id": {"nope"}}, ctype: "application/json", body: good,
			want: []Violation{{In: "header", Path: "X-Request-Id", Message: "must match pattern ^[0-9a-f]{8}$", Code: CodeInvalid}},
		},
		{
			name: "body missing property", query: "lang=en", ctype: "application/json", body: `{"email":"a@example.com"}`,
			want: []Violation{{In: "body", Path: "/message", Message: "is required", Code: CodeInvalid}},
		},
		{
			name: "body format via file ref", query: "lang=en", ctype: "application/json", body: `{"email":"not-an-email","message":"hi"}`,
			want: []Violation{{In: "body", Path: "/email", Message: "'not-an-email' is not valid email: missing @", Code: CodeInvalid}},
		},
		{
			name: "body type", query: "lang=en", ctype: "application/json", body: `{"email":"a@example.com","message":7}`,
			want: []Violation{{In: "body", Path: "/message", Message: "got number, want string", Code: CodeInvalid}},
		},
		{
			name: "body nested array item", query: "lang=en", ctype: "application/json", body: `{"email":"a@example.com","message":"m","tags":["a",2]}`,
			want: []Violation{{In: "body", Path: "/tags/1", Message: "got number, want string", Code: CodeInvalid}},
		},
		{
			name: "body additional property", query: "lang=en", ctype: "application/json", body: `{"email":"a@example.com","message":"m","x/y":1}`,
			want: []Violation{{In: "body", Path: "", Message: "additional properties 'x/y' not allowed", Code: CodeInvalid}},
		},
		{
			name: "body not json", query: "lang=en", ctype: "application/json", body: `{"email":`,
			want: []Violation{{In: "body", Message: "body is not valid JSON: unexpected EOF", Code: CodeInvalid}},
		},
		{
			name: "body missing", query: "lang=en", ctype: "application/json",
			want: []Violation{{In: "body", Message: "a JSON body is required", Code: CodeInvalid}},
		},
		{
			name:  "multiple violations at once",
			query: "page=0&sort=name", header: http.Header{"X-Request-Id": {"zz"}},
			ctype: "application/json", body: `{"email":"nope","message":""}`,
			want: []Violation{
				{In: "query", Path: "lang", Message: "is required", Code: CodeInvalid},
				{In: "query", Path: "page", Message: "must be at least 1", Code: CodeInvalid},
				{In: "query", Path: "sort", Message: `must be one of "created", "updated"`, Code: CodeInvalid},
				{In: "header", Path: "X-Request-Id", Message: "must match pattern ^[0-9a-f]{8}$", Code: CodeInvalid},
				{In: "body", Path: "/email", Message: "'nope' is not valid email: missing @", Code: CodeInvalid},
				{In: "body", Path: "/message", Message: "minLength: got 0, want 1", Code: CodeInvalid},
			},
		},
		{
			name: "oversize body", query: "lang=en", ctype: "application/json", body: `{"message":"` + strings.Repeat("x", 200) + `"}`,
			want: []Violation{{In: "body", Message: "body exceeds 200 bytes", Code: CodeTooLarge}},
		},
		{
			name: "wrong content type", query: "lang=en", ctype: "text/plain", body: good,
			want: []Violation{{In: "header", Path: "Content-Type", Message: `content type "text/plain" is not accepted`, Code: CodeMediaType}},
		},
		{
			name: "missing content type", query: "lang=en", body: good,
			want: []Violation{{In: "header", Path: "Content-Type", Message: "a Content-Type header is required", Code: CodeMediaType}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q, err := url.ParseQuery(tt.query)
			if err != nil {
				t.Fatal(err)
			}
			got := v.Check(q, tt.header, tt.ctype, []byte(tt.body))
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Check() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestCheckSchemas(t *testing.T) {
	inline2020 := map[string]any{
		"type":     "object",
		"required": []any{"n"},
		"properties": map[string]any{
			"n":     map[string]any{"type": "integer", "maximum": uint64(10)},
			"email": map[string]any{"$ref": "schemas/defs.json#/$defs/email"},
		},
	}
	inline7 := map[string]any{
		"$schema":    "http://json-schema.org/draft-07/schema#",
		"properties": map[string]any{"a": map[string]any{"items": []any{map[string]any{"type": "string"}}}},
	}
	tests := []struct {
		name string
		body any
		doc  string
		want []Violation
	}{
		{name: "draft 7 file valid", body: "schemas/draft7.json", doc: `{"id":1,"items":["a"]}`},
		{
			name: "draft 7 file tuple items", body: "schemas/draft7.json", doc: `{"id":0,"items":["a",1]}`,
			want: []Violation{
				{In: "body", Path: "/id", Message: "minimum: got 0, want 1", Code: CodeInvalid},
				{In: "body", Path: "/items", Message: "last 1 additionalItem(s) not allowed", Code: CodeInvalid},
			},
		},
		{name: "draft 7 inline valid", body: inline7, doc: `{"a":["x", 5]}`},
		{
			name: "draft 7 inline array-form items", body: inline7, doc: `{"a":[5]}`,
			want: []Violation{{In: "body", Path: "/a/0", Message: "got number, want string", Code: CodeInvalid}},
		},
		{name: "2020-12 inline valid", body: inline2020, doc: `{"n":10,"email":"a@b.example"}`},
		{
			name: "2020-12 inline with ref to file", body: inline2020, doc: `{"n":11,"email":"x"}`,
			want: []Violation{
				{In: "body", Path: "/email", Message: "'x' is not valid email: missing @", Code: CodeInvalid},
				{In: "body", Path: "/n", Message: "maximum: got 11, want 10", Code: CodeInvalid},
			},
		},
		{
			name: "required property escaped as pointer", body: map[string]any{"required": []any{"a/b"}}, doc: `{}`,
			want: []Violation{{In: "body", Path: "/a~1b", Message: "is required", Code: CodeInvalid}},
		},
		{
			name: "anyOf reported once", body: map[string]any{"anyOf": []any{map[string]any{"type": "string"}, map[string]any{"type": "integer"}}}, doc: `true`,
			want: []Violation{{In: "body", Path: "", Message: "'anyOf' failed", Code: CodeInvalid}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := Compile(config.Validate{Body: tt.body}, "testdata")
			if err != nil {
				t.Fatalf("Compile: %v", err)
			}
			got := v.Check(nil, nil, "application/json", []byte(tt.doc))
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Check() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestContentTypes(t *testing.T) {
	tests := []struct {
		name  string
		cfg   config.Validate
		ctype string
		ok    bool
	}{
		{name: "no rule accepts anything", cfg: config.Validate{}, ctype: "text/plain", ok: true},
		{name: "listed type", cfg: config.Validate{ContentTypes: []string{"text/plain"}}, ctype: "Text/Plain; charset=utf-8", ok: true},
		{name: "unlisted type", cfg: config.Validate{ContentTypes: []string{"text/plain"}}, ctype: "application/json"},
		{name: "wildcard", cfg: config.Validate{ContentTypes: []string{"text/*"}}, ctype: "text/csv", ok: true},
		{name: "wildcard other tree", cfg: config.Validate{ContentTypes: []string{"text/*"}}, ctype: "application/csv"},
		{name: "schema defaults to json", cfg: config.Validate{Body: map[string]any{}}, ctype: "application/problem+json", ok: true},
		{name: "schema refuses form", cfg: config.Validate{Body: map[string]any{}}, ctype: "application/x-www-form-urlencoded"},
		{name: "garbage", cfg: config.Validate{ContentTypes: []string{"text/plain"}}, ctype: "%%%"},
		{name: "schema skipped for non-json type", cfg: config.Validate{Body: map[string]any{"type": "object"}, ContentTypes: []string{"text/plain", "application/json"}}, ctype: "text/plain", ok: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := Compile(tt.cfg, "testdata")
			if err != nil {
				t.Fatalf("Compile: %v", err)
			}
			got := v.Check(nil, nil, tt.ctype, []byte("1"))
			if ok := len(got) == 0; ok != tt.ok {
				t.Errorf("Check(%q) = %v, want ok=%v", tt.ctype, got, tt.ok)
			}
			if !tt.ok && (len(got) != 1 || got[0].Code != CodeMediaType) {
				t.Errorf("Check(%q) = %v, want one %s violation", tt.ctype, got, CodeMediaType)
			}
		})
	}
}

func TestCompileErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  config.Validate
		want Errors
	}{
		{
			name: "bad pattern, type and enum together",
			cfg: config.Validate{
				Query: map[string]config.ParamRule{
					"a": {Pattern: "("},
					"b": {Type: "date"},
					"c": {Type: "integer", Enum: []any{1.5, "x"}},
					"d": {Enum: []any{1}},
					"e": {Min: num(5), Max: num(1)},
					"f": {Type: "boolean", Max: num(1)},
				},
				Headers:      map[string]config.ParamRule{"X": {Type: "boolean", Enum: []any{"yes"}}},
				MaxBodyBytes: -1,
			},
			want: Errors{
				{Path: "max_body_bytes", Msg: "must not be negative, got -1"},
				{Path: "query.a.pattern", Msg: "error parsing regexp: missing closing ): `(`"},
				{Path: "query.b.type", Msg: `unknown type "date": want string, integer, number or boolean`},
				{Path: "query.c.enum[0]", Msg: "1.5 is not an integer"},
				{Path: "query.c.enum[1]", Msg: "x is not an integer"},
				{Path: "query.d.enum[0]", Msg: "1 is not a string; quote it"},
				{Path: "query.e.min", Msg: "5 is greater than max 1"},
				{Path: "query.f", Msg: "min and max do not apply to a boolean"},
				{Path: "headers.X.enum[0]", Msg: "yes is not a boolean"},
			},
		},
		{
			name: "content type",
			cfg:  config.Validate{ContentTypes: []string{"json", "application/json; charset=utf-8"}},
			want: Errors{
				{Path: "content_types[0]", Msg: `invalid media type "json": want type/subtype`},
				{Path: "content_types[1]", Msg: `media type "application/json; charset=utf-8": parameters are not compared; write "application/json"`},
			},
		},
		{
			name: "missing schema file",
			cfg:  config.Validate{Body: "schemas/nope.json"},
			want: Errors{{Path: "body", Msg: "schemas/nope.json: loading " + mustAbs(t, "testdata/schemas/nope.json") + ": no such file or directory"}},
		},
		{
			name: "schema file not json",
			cfg:  config.Validate{Body: "schemas/notjson.json"},
			want: Errors{{Path: "body", Msg: "schemas/notjson.json: loading " + mustAbs(t, "testdata/schemas/notjson.json") + ": unexpected EOF"}},
		},
		{
			name: "remote ref refused",
			cfg:  config.Validate{Body: "schemas/remote.json"},
			want: Errors{{Path: "body", Msg: "schemas/remote.json: loading https://example.com/schemas/thing.json: https://example.com/schemas/thing.json: only local schema files can be referenced"}},
		},
		{
			name: "empty path",
			cfg:  config.Validate{Body: ""},
			want: Errors{{Path: "body", Msg: "empty schema path"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := Compile(tt.cfg, "testdata")
			if v != nil {
				t.Errorf("Compile returned a validator with errors")
			}
			var got Errors
			if !errors.As(err, &got) {
				t.Fatalf("Compile error = %v, want Errors", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("errors mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestCompileInvalidSchema(t *testing.T) {
	tests := []struct {
		name string
		body any
		want string // prefix of the message
	}{
		{name: "file", body: "schemas/broken.json", want: "schemas/broken.json: "},
		{name: "inline", body: map[string]any{"type": 12}, want: "inline schema: "},
		{name: "inline not json", body: map[string]any{"x": func() {}}, want: "inline schema: json: unsupported type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Compile(config.Validate{Body: tt.body}, "testdata")
			var errs Errors
			if !errors.As(err, &errs) || len(errs) != 1 {
				t.Fatalf("Compile error = %v, want one error", err)
			}
			if errs[0].Path != "body" || !strings.HasPrefix(errs[0].Msg, tt.want) || strings.Contains(errs[0].Msg, "\n") {
				t.Errorf("error = %q, want path body and one-line message starting %q", errs[0].Error(), tt.want)
			}
		})
	}
}

func mustAbs(t *testing.T, p string) string {
	t.Helper()
	abs, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return abs
}

func TestReadBody(t *testing.T) {
	tests := []struct {
		name     string
		in       string
		max      int64
		wantLen  int
		tooLarge bool
	}{
		{name: "under", in: "abc", max: 4, wantLen: 3},
		{name: "exact", in: "abcd", max: 4, wantLen: 4},
		{name: "over stops one byte past", in: strings.Repeat("a", 100), max: 4, wantLen: 5, tooLarge: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, tooLarge, err := ReadBody(strings.NewReader(tt.in), tt.max)
			if err != nil || len(b) != tt.wantLen || tooLarge != tt.tooLarge {
				t.Errorf("ReadBody = %d bytes, %v, %v; want %d, %v", len(b), tooLarge, err, tt.wantLen, tt.tooLarge)
			}
		})
	}
}

func TestNilValidatorAcceptsEverything(t *testing.T) {
	var v *Validator
	if got := v.Check(url.Values{"a": {"1"}}, nil, "x", []byte(strings.Repeat("a", 10<<20))); got != nil {
		t.Errorf("nil Validator Check = %v, want nil", got)
	}
}

func BenchmarkCheckQueryHappyPath(b *testing.B) {
	v, err := Compile(config.Validate{Query: contactConfig().Query}, "testdata")
	if err != nil {
		b.Fatal(err)
	}
	q := url.Values{"lang": {"en"}, "page": {"3"}, "sort": {"created"}}
	b.ReportAllocs()
	for b.Loop() {
		if vs := v.Check(q, nil, "", nil); vs != nil {
			b.Fatal(vs)
		}
	}
}

// TestUnambiguousJSON: a validated body is forwarded as sent, so JSON that
// parsers read differently is refused: duplicate keys (the schema would
// check the last, an upstream may read the first) and invalid UTF-8.
func TestUnambiguousJSON(t *testing.T) {
	tests := []struct {
		name, body string
		ok         bool
	}{
		{"plain", `{"model":"cheap","n":[1,"model",{"model":2}],"o":{"a":{"b":1}}}`, true},
		{"same key in sibling objects", `[{"model":1},{"model":2}]`, true},
		{"key equal to a value", `{"a":"a","b":"a"}`, true},
		{"duplicate top-level key", `{"model":"cheap","model":"expensive"}`, false},
		{"duplicate after a nested object", `{"model":"cheap","x":{"model":1},"model":"expensive"}`, false},
		{"duplicate after a nested array", `{"model":"cheap","x":["model"],"model":"expensive"}`, false},
		{"duplicate nested", `{"a":{"k":1,"k":2}}`, false},
		{"duplicate spelled with an escape", `{"model":"cheap","mod\u0065l":"expensive"}`, false},
		{"invalid UTF-8", "{\"model\":\"gpt\xff\"}", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := unambiguous([]byte(tt.body))
			if (err == nil) != tt.ok {
				t.Errorf("unambiguous(%q) = %v, want ok %v", tt.body, err, tt.ok)
			}
		})
	}
}
