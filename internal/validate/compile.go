package validate

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"mime"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/keyward/keyward/internal/config"
)

// Compile turns a route's validate block into a Validator. baseDir is the
// directory of the config file: schema file paths, and relative `$ref`s of
// inline schemas, resolve against it. Every problem is reported at once as Errors,
// each with a path relative to the validate block. Only local files are ever
// read; a `$ref` to an http(s) URL is a compile error, so loading a config
// never depends on, or leaks requests to, the network.
func Compile(cfg config.Validate, baseDir string) (*Validator, error) {
	var errs Errors
	v := &Validator{maxBody: cfg.MaxBodyBytes}
	switch {
	case cfg.MaxBodyBytes == 0:
		v.maxBody = DefaultMaxBodyBytes
	case cfg.MaxBodyBytes < 0:
		errs.Add("max_body_bytes", "must not be negative, got %d", cfg.MaxBodyBytes)
	}
	v.query = compileParams(&errs, "query", cfg.Query, func(s string) string { return s })
	v.headers = compileParams(&errs, "headers", cfg.Headers, canonicalHeader)
	for i, ct := range cfg.ContentTypes {
		mt, params, err := mime.ParseMediaType(ct)
		switch {
		case !strings.Contains(ct, "/"):
			errs.Add(fmt.Sprintf("content_types[%d]", i), "invalid media type %q: want type/subtype", ct)
		case err != nil && !strings.HasSuffix(ct, "/*"):
			errs.Add(fmt.Sprintf("content_types[%d]", i), "invalid media type %q: %v", ct, err)
		case len(params) > 0:
			errs.Add(fmt.Sprintf("content_types[%d]", i), "media type %q: parameters are not compared; write %q", ct, mt)
		default:
			v.contentTypes = append(v.contentTypes, strings.ToLower(strings.TrimSpace(ct)))
		}
	}
	if cfg.Body != nil {
		sch, err := compileSchema(cfg.Body, baseDir)
		if err != nil {
			errs = append(errs, &Error{Path: "body", Msg: err.Error()})
		}
		v.schema = sch
		v.jsonTypes = len(cfg.ContentTypes) == 0
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return v, nil
}

func compileParams(errs *Errors, section string, ps map[string]config.ParamRule, canon func(string) string) []param {
	names := make([]string, 0, len(ps))
	for name := range ps {
		names = append(names, name)
	}
	slices.Sort(names) // stable error order and violation order
	out := make([]param, 0, len(ps))
	for _, name := range names {
		path := section + "." + name
		if name == "" {
			errs.Add(section, "empty parameter name")
			continue
		}
		if p, ok := compileParam(errs, path, ps[name]); ok {
			p.name = canon(name)
			out = append(out, p)
		}
	}
	return out
}

func compileParam(errs *Errors, path string, c config.ParamRule) (param, bool) {
	n := len(*errs)
	p := param{kind: c.Type, required: c.Required, multiple: c.Multiple, min: math.Inf(-1), max: math.Inf(1)}
	switch c.Type {
	case "":
		p.kind = "string"
	case "string", "integer", "number", "boolean":
	default:
		errs.Add(path+".type", "unknown type %q: want string, integer, number or boolean", c.Type)
	}
	if c.Pattern != "" {
		re, err := regexp.Compile(c.Pattern)
		if err != nil {
			errs.Add(path+".pattern", "%v", err)
		}
		p.pattern = re
	}
	if c.Min != nil {
		p.min = *c.Min
	}
	if c.Max != nil {
		p.max = *c.Max
	}
	if p.kind == "boolean" && (c.Min != nil || c.Max != nil) {
		errs.Add(path, "min and max do not apply to a boolean")
	}
	if p.min > p.max {
		errs.Add(path+".min", "%s is greater than max %s", fmtNum(p.min), fmtNum(p.max))
	}
	if p.kind == "string" && c.Min != nil && *c.Min < 0 {
		errs.Add(path+".min", "a length cannot be negative")
	}
	for i, e := range c.Enum {
		epath := fmt.Sprintf("%s.enum[%d]", path, i)
		switch p.kind {
		case "integer", "number":
			f, ok := enumNumber(e)
			if !ok || (p.kind == "integer" && f != math.Trunc(f)) {
				errs.Add(epath, "%v is not %s", e, article(p.kind))
				continue
			}
			p.enumNum = append(p.enumNum, f)
		case "boolean":
			b, ok := e.(bool)
			if s, isStr := e.(string); isStr {
				b, ok = s == "true", s == "true" || s == "false"
			}
			if !ok {
				errs.Add(epath, "%v is not a boolean", e)
				continue
			}
			p.enum = append(p.enum, strconv.FormatBool(b))
		default:
			s, ok := e.(string)
			if !ok {
				// YAML reads `enum: [1, yes]` as numbers and booleans; a
				// string parameter compares text, so say which text.
				errs.Add(epath, "%v is not a string; quote it", e)
				continue
			}
			p.enum = append(p.enum, s)
		}
	}
	return p, len(*errs) == n
}

func enumNumber(e any) (float64, bool) {
	switch n := e.(type) {
	case int:
		return float64(n), true
	case int64:
		return float64(n), true
	case uint64:
		return float64(n), true
	case float64:
		return n, true
	case json.Number:
		f, err := n.Float64()
		return f, err == nil
	case string:
		f, err := strconv.ParseFloat(n, 64)
		return f, err == nil
	}
	return 0, false
}

// compileSchema compiles a body schema given as a file path or inline value.
func compileSchema(body any, baseDir string) (*jsonschema.Schema, error) {
	base, err := filepath.Abs(baseDir)
	if err != nil {
		return nil, fmt.Errorf("resolving config directory: %w", err)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	// Form validation wants "format": "email" enforced, not merely annotated
	// as 2020-12 does by default.
	c.AssertFormat()
	c.UseLoader(localLoader{})

	var loc, name string
	switch b := body.(type) {
	case string:
		if b == "" {
			return nil, errors.New("empty schema path")
		}
		name = b
		path := b
		if !filepath.IsAbs(path) {
			path = filepath.Join(base, path)
		}
		loc = fileURL(path)
	default:
		doc, err := jsonValue(b)
		if err != nil {
			return nil, fmt.Errorf("inline schema: %w", err)
		}
		name = "inline schema"
		// A file URL in the config directory lets an inline schema `$ref`
		// files next to the config, like a schema file would.
		loc = fileURL(filepath.Join(base, "inline-schema.json"))
		if err := c.AddResource(loc, doc); err != nil {
			return nil, fmt.Errorf("%s: %s", name, schemaErr(err))
		}
	}
	sch, err := c.Compile(loc)
	if err != nil {
		return nil, fmt.Errorf("%s: %s", name, schemaErr(err))
	}
	return sch, nil
}

// jsonValue converts a decoded YAML value into the JSON data model the
// schema library expects (string keys, json.Number numbers).
func jsonValue(v any) (any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return jsonschema.UnmarshalJSON(bytes.NewReader(b))
}

func fileURL(path string) string {
	return (&url.URL{Scheme: "file", Path: filepath.ToSlash(path)}).String()
}

// schemaErr makes the schema library's errors fit on one config error line
// and replaces absolute file URLs, which say nothing the user wrote.
func schemaErr(err error) string {
	var le *jsonschema.LoadURLError
	if errors.As(err, &le) {
		return "loading " + strings.TrimPrefix(le.URL, "file://") + ": " + unwrapAll(le.Err)
	}
	var se *jsonschema.SchemaValidationError
	var ve *jsonschema.ValidationError
	if errors.As(err, &se) && errors.As(se.Err, &ve) {
		// Name each broken keyword by its location in the schema document,
		// the way a body violation names a field.
		var parts []string
		for _, v := range schemaViolations(nil, ve, false) {
			parts = append(parts, "at "+cmpPath(v.Path)+": "+v.Message)
		}
		return "not a valid schema: " + strings.Join(parts, "; ")
	}
	return strings.Join(strings.Fields(err.Error()), " ")
}

func cmpPath(p string) string {
	if p == "" {
		return "/"
	}
	return p
}

func unwrapAll(err error) string {
	var pe interface{ Unwrap() error }
	for errors.As(err, &pe) && pe.Unwrap() != nil {
		err = pe.Unwrap()
	}
	return err.Error()
}

// localLoader loads only file: URLs; the library's default loader would
// also be file-only, but saying so here keeps it true if that changes.
type localLoader struct{}

func (localLoader) Load(u string) (any, error) {
	if !strings.HasPrefix(u, "file://") {
		return nil, fmt.Errorf("%s: only local schema files can be referenced", u)
	}
	return jsonschema.FileLoader{}.Load(u)
}
