package config

import (
	"errors"
	"fmt"
	"go/build"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseBodyBlocks(t *testing.T) {
	src := `routes:
  - name: contact
    path: /contact
    methods: [POST]
    upstream: https://h.test/send
    validate:
      query:
        page: { type: integer, min: 1, required: true, multiple: true, enum: [1, "2"] }
      headers:
        X-Request-Id: { pattern: "^[a-f0-9]{8}$" }
      body: schemas/contact.json
      content_types: [application/json]
    transform:
      request: '{text: .message}'
      response: '{sent: true}'
      method: PUT
      content_type: application/json
      non_json: reject
      timeout: 50ms
      max_bytes: 4096
`
	f := mustParse(t, src)
	if len(f.Unknown) != 0 {
		t.Fatalf("Unknown = %v, want none", f.Unknown)
	}
	r := f.Config.Routes[0]
	one := 1.0
	wantV := &Validate{
		Query: map[string]ParamRule{
			"page": {Type: "integer", Min: &one, Required: true, Multiple: true, Enum: []any{uint64(1), "2"}},
		},
		Headers:      map[string]ParamRule{"X-Request-Id": {Pattern: "^[a-f0-9]{8}$"}},
		Body:         "schemas/contact.json",
		ContentTypes: []string{"application/json"},
	}
	if diff := cmp.Diff(wantV, r.Validate); diff != "" {
		t.Errorf("Validate (-want +got):\n%s", diff)
	}
	wantT := &Transform{
		Request: "{text: .message}", Response: "{sent: true}", Method: "PUT",
		ContentType: "application/json", NonJSON: "reject", Timeout: 50 * time.Millisecond, MaxBytes: 4096,
	}
	if diff := cmp.Diff(wantT, r.Transform); diff != "" {
		t.Errorf("Transform (-want +got):\n%s", diff)
	}
}

func TestBodyBlocksUnknownFields(t *testing.T) {
	// max_body_bytes is not a YAML field: the route's max_body is the one
	// knob that bounds bodies.
	src := `routes:
  - name: contact
    path: /contact
    upstream: https://h.test/send
    validate:
      query:
        page: { requird: true }
      max_body_bytes: 10
    transform:
      reponse: '.'
`
	f := mustParse(t, src)
	var got []string
	for _, e := range configErrors(t, errors.Join(f.Unknown...)) {
		msg, _, _ := strings.Cut(e.Msg, " (known:")
		got = append(got, fmt.Sprintf("%s:%d: %s: %s", e.File, e.Line, e.Path, msg))
	}
	want := []string{
		`keyward.yaml:7: routes[0].validate.query.page.requird: unknown field (did you mean "required"?)`,
		`keyward.yaml:8: routes[0].validate.max_body_bytes: unknown field`,
		`keyward.yaml:10: routes[0].transform.reponse: unknown field (did you mean "response"?)`,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("problems (-want +got):\n%s", diff)
	}
}

// TestLeaf keeps the YAML contract a leaf: config imports no other keyward
// package, so the runtime packages depend on it and never the reverse.
func TestLeaf(t *testing.T) {
	pkg, err := build.ImportDir(".", 0)
	if err != nil {
		t.Fatalf("reading the package's imports: %v", err)
	}
	for _, imp := range pkg.Imports {
		if imp == "github.com/keyward/keyward" || strings.HasPrefix(imp, "github.com/keyward/keyward/") {
			t.Errorf("config imports %s; the YAML structs it needs belong in config", imp)
		}
	}
}
