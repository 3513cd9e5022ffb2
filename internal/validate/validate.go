// Package validate checks a request's query parameters, headers and JSON body
// before the gateway forwards it, so a malformed form never reaches (or is
// billed by) the third-party API.
//
// Rules are compiled once from a route's [config.Validate] by [Compile]; the
// resulting [Validator] is immutable, safe for concurrent use, and reports
// every problem of a request at once as [Violation] values precise enough to
// show next to a form field. [Render] turns them into the gateway's JSON error.
package validate

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"net/http"
	"net/textproto"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/santhosh-tekuri/jsonschema/v6/kind"
	"golang.org/x/text/language"
	"golang.org/x/text/message"
)

// Violation codes. A request with several violations is answered with the
// most specific code: body_too_large, then unsupported_media_type, then
// validation_failed.
const (
	// CodeInvalid marks an ordinary rule violation (HTTP 400).
	CodeInvalid = "validation_failed"
	// CodeTooLarge marks a body over the route's bound (HTTP 413).
	CodeTooLarge = "body_too_large"
	// CodeMediaType marks a body whose content type is not accepted (HTTP 415).
	CodeMediaType = "unsupported_media_type"
)

// Violation is one reason a request was refused.
type Violation struct {
	// In is where the problem is: "query", "header" or "body".
	In string `json:"in"`
	// Path is the parameter or canonical header name for query and header
	// violations, and a JSON Pointer (RFC 6901) into the body for body
	// violations ("" is the whole body).
	Path string `json:"path"`
	// Message says which rule failed. It may quote the client's own value,
	// never anything else the gateway holds.
	Message string `json:"message"`
	// Code is CodeInvalid, CodeTooLarge or CodeMediaType; it selects the
	// HTTP status and is not part of the JSON violation.
	Code string `json:"-"`
}

// Validator is a compiled [config.Validate]. The zero value is not usable; a nil
// *Validator accepts every request, so a route without `validate:` needs no
// special case.
type Validator struct {
	query        []param
	headers      []param
	schema       *jsonschema.Schema
	contentTypes []string // lower-case media types, "x/*" wildcards allowed
	jsonTypes    bool     // accept application/json and */*+json
	maxBody      int64
}

// MaxBodyBytes returns the body bound, so the gateway can stop reading the
// body one byte past it (see [ReadBody]). A nil Validator returns
// DefaultMaxBodyBytes.
func (v *Validator) MaxBodyBytes() int64 {
	if v == nil {
		return DefaultMaxBodyBytes
	}
	return v.maxBody
}

// Check returns every violation of the request, or nil when it is valid. Body
// must be the request body as read by the gateway, at most MaxBodyBytes()+1
// bytes long (a longer body is reported as CodeTooLarge, and its content is
// not inspected further). The happy path allocates only for body decoding.
func (v *Validator) Check(query url.Values, header http.Header, contentType string, body []byte) []Violation {
	if v == nil {
		return nil
	}
	var vs []Violation
	for i := range v.query {
		vs = v.query[i].check(vs, "query", query[v.query[i].name])
	}
	for i := range v.headers {
		vs = v.headers[i].check(vs, "header", header[v.headers[i].name])
	}
	return v.checkBody(vs, contentType, body)
}

func (v *Validator) checkBody(vs []Violation, contentType string, body []byte) []Violation {
	if int64(len(body)) > v.maxBody {
		return append(vs, Violation{In: "body", Message: "body exceeds " + strconv.FormatInt(v.maxBody, 10) + " bytes", Code: CodeTooLarge})
	}
	if len(body) == 0 {
		if v.schema != nil {
			vs = append(vs, Violation{In: "body", Message: "a JSON body is required", Code: CodeInvalid})
		}
		return vs
	}
	mt, isJSON, ok := v.acceptType(contentType)
	if !ok {
		msg := "content type " + strconv.Quote(mt) + " is not accepted"
		if mt == "" {
			msg = "a Content-Type header is required"
		}
		return append(vs, Violation{In: "header", Path: "Content-Type", Message: msg, Code: CodeMediaType})
	}
	if v.schema == nil || !isJSON {
		return vs
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
	if err == nil {
		err = unambiguous(body)
	}
	if err != nil {
		return append(vs, Violation{In: "body", Message: "body is not valid JSON: " + err.Error(), Code: CodeInvalid})
	}
	err = v.schema.Validate(doc)
	if err == nil {
		return vs
	}
	ve, ok := err.(*jsonschema.ValidationError)
	if !ok {
		return append(vs, Violation{In: "body", Message: err.Error(), Code: CodeInvalid})
	}
	start := len(vs)
	vs = schemaViolations(vs, ve, true)
	// The schema library walks objects in map order; sort so the same
	// request always gets the same answer.
	slices.SortStableFunc(vs[start:], func(a, b Violation) int {
		if c := strings.Compare(a.Path, b.Path); c != 0 {
			return c
		}
		return strings.Compare(a.Message, b.Message)
	})
	return slices.CompactFunc(vs, func(a, b Violation) bool { return a == b })
}

// acceptType reports the request's media type, whether it is JSON, and
// whether the route accepts it.
func (v *Validator) acceptType(contentType string) (mt string, isJSON, ok bool) {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		// Keep what the client sent visible in the message, but bounded.
		mt = strings.ToLower(strings.TrimSpace(contentType))
		if len(mt) > 100 {
			mt = mt[:100]
		}
		return mt, false, false
	}
	isJSON = mt == "application/json" || strings.HasSuffix(mt, "+json")
	if v.jsonTypes && isJSON {
		return mt, true, true
	}
	if len(v.contentTypes) == 0 && !v.jsonTypes {
		return mt, isJSON, true
	}
	for _, want := range v.contentTypes {
		if want == mt || (strings.HasSuffix(want, "/*") && strings.HasPrefix(mt, want[:len(want)-1])) {
			return mt, isJSON, true
		}
	}
	return mt, isJSON, false
}

// schemaViolations flattens a schema error tree into violations at its
// leaves, where the instance location is most precise. anyOf and oneOf are
// reported as one violation: the leaves of every failed alternative would
// list rules the client need not meet.
//
// For a broken schema (checked against its metaschema) collapse is false:
// the schema's author wants every alternative's reason.
func schemaViolations(vs []Violation, e *jsonschema.ValidationError, collapse bool) []Violation {
	switch k := e.ErrorKind.(type) {
	case *kind.Required:
		for _, name := range k.Missing {
			vs = append(vs, Violation{In: "body", Path: pointer(append(e.InstanceLocation, name)), Message: "is required", Code: CodeInvalid})
		}
		return vs
	case *kind.AnyOf, *kind.OneOf:
		if !collapse {
			break
		}
		return append(vs, Violation{In: "body", Path: pointer(e.InstanceLocation), Message: e.ErrorKind.LocalizedString(printer), Code: CodeInvalid})
	}
	if len(e.Causes) == 0 {
		return append(vs, Violation{In: "body", Path: pointer(e.InstanceLocation), Message: e.ErrorKind.LocalizedString(printer), Code: CodeInvalid})
	}
	for _, c := range e.Causes {
		vs = schemaViolations(vs, c, collapse)
	}
	return vs
}

// printer renders schema messages; English, as the rest of the gateway.
var printer = message.NewPrinter(language.English)

// pointer renders a JSON Pointer (RFC 6901).
func pointer(tokens []string) string {
	var b strings.Builder
	for _, t := range tokens {
		b.WriteByte('/')
		t = strings.ReplaceAll(t, "~", "~0")
		b.WriteString(strings.ReplaceAll(t, "/", "~1"))
	}
	return b.String()
}

// param is a compiled config.ParamRule.
type param struct {
	name     string // query name, or canonical header name
	kind     string
	pattern  *regexp.Regexp
	enum     []string  // string and boolean enums, canonical form
	enumNum  []float64 // integer and number enums
	required bool
	min, max float64 // -Inf / +Inf when unbounded
	multiple bool
}

func (p *param) check(vs []Violation, in string, values []string) []Violation {
	if len(values) == 0 {
		if p.required {
			vs = append(vs, Violation{In: in, Path: p.name, Message: "is required", Code: CodeInvalid})
		}
		return vs
	}
	if len(values) > 1 && !p.multiple {
		return append(vs, Violation{In: in, Path: p.name, Message: "must be given once, got " + strconv.Itoa(len(values)) + " values", Code: CodeInvalid})
	}
	for _, val := range values {
		if msg := p.problem(val); msg != "" {
			vs = append(vs, Violation{In: in, Path: p.name, Message: msg, Code: CodeInvalid})
		}
	}
	return vs
}

// problem returns why val breaks the rule, or "" when it does not. Messages
// name the rule, not the value: the value is the client's own and is already
// next to the field.
func (p *param) problem(val string) string {
	if p.pattern != nil && !p.pattern.MatchString(val) {
		return "must match pattern " + p.pattern.String()
	}
	switch p.kind {
	case "integer", "number":
		n, err := strconv.ParseFloat(val, 64)
		if err != nil || math.IsInf(n, 0) || math.IsNaN(n) {
			return "must be " + article(p.kind)
		}
		if p.kind == "integer" {
			if _, err := strconv.ParseInt(val, 10, 64); err != nil {
				return "must be an integer"
			}
		}
		if n < p.min {
			return "must be at least " + fmtNum(p.min)
		}
		if n > p.max {
			return "must be at most " + fmtNum(p.max)
		}
		if p.enumNum != nil && !slices.Contains(p.enumNum, n) {
			return "must be one of " + joinNums(p.enumNum)
		}
	case "boolean":
		if val != "true" && val != "false" {
			return "must be true or false"
		}
		if p.enum != nil && !slices.Contains(p.enum, val) {
			return "must be " + p.enum[0]
		}
	default:
		n := float64(utf8.RuneCountInString(val))
		if n < p.min {
			return "must be at least " + fmtNum(p.min) + " characters long"
		}
		if n > p.max {
			return "must be at most " + fmtNum(p.max) + " characters long"
		}
		if p.enum != nil && !slices.Contains(p.enum, val) {
			return "must be one of " + strings.Join(quoteAll(p.enum), ", ")
		}
	}
	return ""
}

func article(kind string) string {
	if kind == "integer" {
		return "an integer"
	}
	return "a number"
}

func fmtNum(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

func joinNums(fs []float64) string {
	s := make([]string, len(fs))
	for i, f := range fs {
		s[i] = fmtNum(f)
	}
	return strings.Join(s, ", ")
}

func quoteAll(ss []string) []string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = strconv.Quote(s)
	}
	return q
}

func canonicalHeader(name string) string { return textproto.CanonicalMIMEHeaderKey(name) }

// unambiguous refuses JSON that parsers read differently: invalid UTF-8
// (Go's decoder replaces it, others keep the bytes or fail) and duplicate
// object keys (Go keeps the last, some parsers the first). The body that
// was validated is the body forwarded, so the upstream must read exactly
// what the schema checked: {"model":"cheap","model":"expensive"} must not
// pass an enum of cheap models.
func unambiguous(body []byte) error {
	if !utf8.Valid(body) {
		return errors.New("invalid UTF-8")
	}
	d := json.NewDecoder(bytes.NewReader(body))
	type object struct {
		keys   map[string]bool
		expect bool // the next string token is a key
	}
	var stack []*object
	for {
		tok, err := d.Token()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		var top *object
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		switch t := tok.(type) {
		case json.Delim:
			switch t {
			case '{':
				if top != nil {
					top.expect = true
				}
				stack = append(stack, &object{keys: map[string]bool{}, expect: true})
			case '[':
				if top != nil {
					top.expect = true
				}
				stack = append(stack, &object{})
			case '}', ']':
				stack = stack[:len(stack)-1]
			}
		case string:
			if top != nil && top.keys != nil && top.expect {
				if top.keys[t] {
					return fmt.Errorf("duplicate key %q", truncate(t))
				}
				top.keys[t] = true
				top.expect = false
				continue
			}
			if top != nil {
				top.expect = true
			}
		default:
			if top != nil {
				top.expect = true
			}
		}
	}
}

// truncate shortens a client-supplied string for an error message.
func truncate(s string) string {
	if len(s) > 64 {
		return strings.ToValidUTF8(s[:64], "") + "..."
	}
	return s
}
