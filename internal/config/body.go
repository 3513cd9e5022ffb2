package config

import "time"

// Validate is a route's `validate:` block: rules for the query, the headers
// and the body, checked before the request is forwarded. validate.Compile
// turns it into the validator the request path uses.
//
//	validate:
//	  query:
//	    page:  { type: integer, min: 1, max: 100 }
//	    sort:  { enum: [created, updated] }
//	  headers:
//	    X-Request-Id: { pattern: "^[a-f0-9-]{36}$" }
//	  body: schemas/contact.json      # or an inline schema mapping
//	  content_types: [application/json]
type Validate struct {
	// Query holds one rule per query parameter name. Parameters without a
	// rule are not checked here (the route's query allowlist decides whether
	// they reach the upstream).
	Query map[string]ParamRule `yaml:"query" json:"query,omitempty"`

	// Headers holds one rule per request header name; names are
	// case-insensitive (RFC 9110, section 5.1).
	Headers map[string]ParamRule `yaml:"headers" json:"headers,omitempty"`

	// Body is a JSON Schema for the request body: either a string, the path
	// of a schema file relative to the config file's directory, or an inline
	// schema (a YAML mapping). Nil means the body is not checked against a
	// schema. Drafts 2020-12 (the default when `$schema` is absent) and 7
	// are supported; `$ref` may only point at local files.
	Body any `yaml:"body" json:"body,omitempty"`

	// ContentTypes lists the media types a request body may have, without
	// parameters ("application/json", "text/*"). Empty means: when Body is
	// set, application/json and any "+json" type; otherwise any type.
	ContentTypes []string `yaml:"content_types" json:"content_types,omitempty"`

	// MaxBodyBytes bounds the request body. Zero means 1 MiB
	// (validate.DefaultMaxBodyBytes); a negative value is a config error.
	// It is not a YAML field: the gateway sets it from the route's
	// max_body, so one knob bounds bodies.
	MaxBodyBytes int64 `yaml:"-" json:"-"`
}

// ParamRule is the validation rule for one query parameter or header.
type ParamRule struct {
	// Type is "string" (the default), "integer", "number" or "boolean".
	// Booleans accept exactly "true" and "false".
	Type string `yaml:"type" json:"type,omitempty"`

	// Pattern is a Go (RE2) regular expression the raw value must match. It
	// is not anchored implicitly, as in JSON Schema; write ^ and $.
	Pattern string `yaml:"pattern" json:"pattern,omitempty"`

	// Enum lists the accepted values; empty means any value. Entries are
	// compared as the parameter's Type (so 1 and "1" are the same integer).
	Enum []any `yaml:"enum" json:"enum,omitempty"`

	// Required makes a missing parameter a violation. The default is false.
	Required bool `yaml:"required" json:"required,omitempty"`

	// Min and Max bound the length in characters of a string, or the value
	// of an integer or number. Nil means unbounded.
	Min *float64 `yaml:"min" json:"min,omitempty"`
	Max *float64 `yaml:"max" json:"max,omitempty"`

	// Multiple allows the parameter to be given more than once
	// (`?tag=a&tag=b`); each value is checked. The default is false because
	// a repeated parameter is a classic way to make the gateway and the
	// upstream read different values (HTTP parameter pollution).
	Multiple bool `yaml:"multiple" json:"multiple,omitempty"`
}

// Transform is a route's `transform:` block: jq expressions that reshape
// JSON bodies on the way up and down. transform.Compile turns it into the
// programs the request path runs.
//
//	transform:
//	  request:  '{to: "team@example.com", from: .email, text: .message, api_key: $secret.mailer}'
//	  response: '{sent: (.status == "queued")}'
//	  method: POST                     # upstream method; default: the client's
//	  content_type: application/json   # upstream Content-Type; default below
//	  non_json: reject                 # the default; or pass
//	  timeout: 100ms
//	  max_bytes: 1048576
type Transform struct {
	// Request is a jq expression mapping the client's JSON body to the
	// upstream's. It may read $params (path parameters), $query (allowed
	// query parameters, first value each), $stage (stage variables) and
	// $secret.NAME. Empty means the body is forwarded unchanged.
	Request string `yaml:"request" json:"request,omitempty"`

	// Response is a jq expression mapping the upstream's JSON body to the
	// client's. It may read $params, $query and $stage but never $secret:
	// its output goes to the client. Empty means no response transform.
	Response string `yaml:"response" json:"response,omitempty"`

	// Method overrides the upstream request method (a GET route that POSTs
	// a JSON body upstream). Empty keeps the client's method.
	Method string `yaml:"method" json:"method,omitempty"`

	// ContentType overrides the upstream request's Content-Type. Empty
	// means "application/json" when Request is set, else unchanged.
	ContentType string `yaml:"content_type" json:"content_type,omitempty"`

	// NonJSON says what happens to a body that is not JSON (by Content-Type
	// or by content): "reject" (the default) refuses a request body with
	// 415 unsupported_media_type (not declared JSON) or 400 invalid_json
	// (declared JSON, does not parse) and answers an upstream body with 502;
	// "pass" forwards it untouched, unchecked by the transform, and must be
	// written explicitly.
	NonJSON string `yaml:"non_json" json:"non_json,omitempty"`

	// Timeout bounds one evaluation. Zero means 100ms
	// (transform.DefaultTimeout).
	Timeout time.Duration `yaml:"timeout" json:"timeout,omitempty"`

	// MaxBytes bounds the JSON input and output of one evaluation, and the
	// size of any string, array or value the expression builds on the way.
	// Zero means 1 MiB (transform.DefaultMaxBytes).
	MaxBytes int64 `yaml:"max_bytes" json:"max_bytes,omitempty"`
}
