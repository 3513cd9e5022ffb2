package config

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"
)

// File is a decoded config file together with what is needed to point at
// its lines.
type File struct {
	// Name is the path the file was read from, as given.
	Name string
	// Config is the decoded content, with defaults applied.
	Config Config
	// Unknown holds one *Error per unknown field. Decoding continues past
	// them so that `keyward check` reports them together with every
	// semantic problem; compiling a File with Unknown fields fails.
	Unknown []error
	root    ast.Node
}

// Error is one problem in a config file.
type Error struct {
	File string
	Line int
	// Path is the field path, e.g. "routes[2].headers.set.Authorization".
	Path string
	Msg  string
}

// Error formats as "FILE:LINE: PATH: MSG", the form editors jump to.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteByte(':')
		b.WriteString(strconv.Itoa(e.Line))
	}
	b.WriteString(": ")
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Load reads, decodes and defaults the file at name. A YAML syntax or type
// error stops decoding and is returned; unknown fields are collected in
// File.Unknown.
func Load(name string) (*File, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	return Parse(name, data)
}

// Parse is Load on bytes already read; name is used in messages.
func Parse(name string, data []byte) (*File, error) {
	f := &File{Name: name}
	astFile, err := parser.ParseBytes(data, 0)
	if err != nil {
		return nil, f.yamlError(err)
	}
	for _, doc := range astFile.Docs {
		if doc.Body != nil {
			if f.root != nil {
				return nil, &Error{File: name, Line: doc.Body.GetToken().Position.Line, Msg: "more than one YAML document"}
			}
			f.root = doc.Body
		}
	}
	if f.root == nil {
		return nil, &Error{File: name, Line: 1, Msg: "empty config: at least one route is required"}
	}
	f.unknownFields(f.root, reflect.TypeOf(Config{}), "", &f.Unknown)
	if err := f.decode(); err != nil {
		return nil, err
	}
	f.Config.setDefaults()
	return f, nil
}

// decode turns the tree into f.Config. go-yaml v1.19.2 panics on some
// inputs (a tag on an empty value where a list is expected, as in
// "routes: !x"); a config file is user input, so that becomes an Error.
func (f *File) decode() (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &Error{File: f.Name, Msg: fmt.Sprintf("cannot decode the file (is there a YAML tag such as !x on an empty value?): %v", r)}
		}
	}()
	if err := yaml.NodeToValue(f.root, &f.Config); err != nil {
		return f.yamlError(err)
	}
	return nil
}

func (f *File) yamlError(err error) error {
	var ye yaml.Error
	if errors.As(err, &ye) {
		line := 0
		if tk := ye.GetToken(); tk != nil && tk.Position != nil {
			line = tk.Position.Line
		}
		return &Error{File: f.Name, Line: line, Msg: ye.GetMessage()}
	}
	return &Error{File: f.Name, Msg: err.Error()}
}

// unknownFields walks the YAML tree against the Go type and reports every
// key that has no field, so one run of `keyward check` shows all of them.
func (f *File) unknownFields(n ast.Node, t reflect.Type, path string, errs *[]error) {
	n = unwrap(n)
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct:
		m, ok := n.(*ast.MappingNode)
		if !ok {
			return // a type error; decoding reports it
		}
		fields := yamlFields(t)
		for _, kv := range m.Values {
			key := kv.Key.GetToken().Value
			ft, ok := fields[key]
			if !ok {
				*errs = append(*errs, &Error{File: f.Name, Line: kv.Key.GetToken().Position.Line,
					Path: join(path, key), Msg: "unknown field" + suggest(key, fields)})
				continue
			}
			f.unknownFields(kv.Value, ft, join(path, key), errs)
		}
	case reflect.Map:
		if m, ok := n.(*ast.MappingNode); ok {
			for _, kv := range m.Values {
				f.unknownFields(kv.Value, t.Elem(), join(path, kv.Key.GetToken().Value), errs)
			}
		}
	case reflect.Slice:
		if s, ok := n.(*ast.SequenceNode); ok {
			for i, v := range s.Values {
				f.unknownFields(v, t.Elem(), path+"["+strconv.Itoa(i)+"]", errs)
			}
		}
	}
}

func yamlFields(t reflect.Type) map[string]reflect.Type {
	m := make(map[string]reflect.Type, t.NumField())
	for i := range t.NumField() {
		sf := t.Field(i)
		name, _, _ := strings.Cut(sf.Tag.Get("yaml"), ",")
		if name != "" && name != "-" {
			m[name] = sf.Type
		}
	}
	return m
}

// suggest names the known field closest to a misspelt one.
func suggest(key string, fields map[string]reflect.Type) string {
	names := make([]string, 0, len(fields))
	for n := range fields {
		names = append(names, n)
	}
	sort.Strings(names)
	best, bestD := "", 3
	for _, n := range names {
		if d := distance(strings.ToLower(key), n); d < bestD {
			best, bestD = n, d
		}
	}
	if best != "" {
		return fmt.Sprintf(" (did you mean %q?)", best)
	}
	return " (known: " + strings.Join(names, ", ") + ")"
}

// distance is the Levenshtein distance, used only for suggestions.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			c := prev[j-1]
			if a[i-1] != b[j-1] {
				c++
			}
			cur[j] = min(c, prev[j]+1, cur[j-1]+1)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func unwrap(n ast.Node) ast.Node {
	for {
		switch v := n.(type) {
		case *ast.AnchorNode:
			n = v.Value
		case *ast.TagNode:
			n = v.Value
		case *ast.AliasNode:
			return n
		default:
			return n
		}
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// Line returns the line of the value at path ("routes[1].methods"), or of
// the closest enclosing node that exists, so an error about a missing field
// points at its parent.
func (f *File) Line(path string) int {
	n := f.root
	line := 0
	if n != nil {
		line = n.GetToken().Position.Line
	}
	for _, el := range splitPath(path) {
		n = unwrap(n)
		var next ast.Node
		switch v := n.(type) {
		case *ast.MappingNode:
			for _, kv := range v.Values {
				if kv.Key.GetToken().Value == el.key && el.index < 0 {
					next = kv.Value
					line = kv.Key.GetToken().Position.Line
				}
			}
		case *ast.SequenceNode:
			if el.index >= 0 && el.index < len(v.Values) {
				next = v.Values[el.index]
				line = lineOfNode(next)
			}
		}
		if next == nil {
			return line
		}
		n = next
	}
	return line
}

// lineOfNode returns where a node starts; a mapping inside a sequence
// reports the line of its first key.
func lineOfNode(n ast.Node) int {
	n = unwrap(n)
	if m, ok := n.(*ast.MappingNode); ok && len(m.Values) > 0 {
		return m.Values[0].Key.GetToken().Position.Line
	}
	return n.GetToken().Position.Line
}

type pathElem struct {
	key   string
	index int
}

func splitPath(path string) []pathElem {
	var out []pathElem
	for part := range strings.SplitSeq(path, ".") {
		if part == "" {
			continue
		}
		key, rest, _ := strings.Cut(part, "[")
		if key != "" {
			out = append(out, pathElem{key: key, index: -1})
		}
		for rest != "" {
			num, after, _ := strings.Cut(rest, "]")
			i, err := strconv.Atoi(num)
			if err != nil {
				break
			}
			out = append(out, pathElem{index: i})
			_, rest, _ = strings.Cut(after, "[")
		}
	}
	return out
}

// Errorf returns an Error at path, with the line looked up in the file.
func (f *File) Errorf(path, format string, args ...any) *Error {
	return &Error{File: f.Name, Line: f.Line(path), Path: path, Msg: fmt.Sprintf(format, args...)}
}

func (c *Config) setDefaults() {
	if c.Listen == "" {
		c.Listen = ":8080"
	}
	s := &c.Server
	if s.ReadHeaderTimeout == "" {
		s.ReadHeaderTimeout = "10s"
	}
	if s.IdleTimeout == "" {
		s.IdleTimeout = "120s"
	}
	if s.MaxHeaderBytes == 0 {
		s.MaxHeaderBytes = 64 << 10
	}
	if s.ShutdownTimeout == "" {
		s.ShutdownTimeout = "30s"
	}
	if s.MaxConnections == 0 {
		s.MaxConnections = 10000
	}
	if s.MaxHeaders == 0 {
		s.MaxHeaders = 100
	}
	if s.MaxBufferedBytes == "" {
		s.MaxBufferedBytes = "64MiB"
	}
	if s.WriteTimeout == "" {
		s.WriteTimeout = "30s"
	}
	if s.ReadBodyTimeout == "" {
		s.ReadBodyTimeout = "60s"
	}
	if c.ClientIP.IPv6WidePrefix == nil {
		wide := 48
		c.ClientIP.IPv6WidePrefix = &wide
	}
	if c.Log.Access == nil {
		on := true
		c.Log.Access = &on
	}
	for i := range c.Routes {
		r := &c.Routes[i]
		if len(r.Methods) == 0 {
			r.Methods = []string{"GET"}
		}
		if r.Timeout == "" {
			r.Timeout = "30s"
		}
		if r.IdleTimeout == "" {
			r.IdleTimeout = "2m"
		}
		if r.MaxBody == "" {
			r.MaxBody = "1MiB"
		}
	}
}

// ParseSize parses a byte size: "512", "64KB", "1MiB", "10MB". KB and KiB
// both mean 1024 bytes, as users of body limits expect.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1 << 10}, {"MB", 1 << 20}, {"GB", 1 << 30}, {"B", 1}} {
		if v, ok := strings.CutSuffix(t, u.suffix); ok {
			t, mult = strings.TrimSpace(v), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("bad size %q: want a number with an optional unit, like 64KB or 1MiB", s)
	}
	return n * mult, nil
}

// ParseDuration parses a Go duration ("30s", "10m") that must be positive.
func ParseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("bad duration %q: want a positive duration like 30s or 10m", s)
	}
	return d, nil
}
