package config

import (
	"bytes"
	"encoding"
	"errors"
	"fmt"
	"maps"
	"os"
	"reflect"
	"slices"
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
	// Unknown holds one *Error per problem found while decoding: unknown
	// fields, values of the wrong shape (left out of Config, so that the
	// rest still decodes) and cloud-console habits (a "did you mean").
	// Decoding continues past them so that `keyward check` reports them
	// together with every semantic problem; compiling a File with
	// Unknown problems fails.
	Unknown []error
	root    ast.Node
	// shadow lists the field paths a problem in Unknown already covers:
	// a misspelt "upstrem" leaves "upstream" unset, and saying so as well
	// would be a knock-on error (see Shadowed).
	shadow []string
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

// Load reads, decodes and defaults the file at name. A YAML syntax error
// stops decoding and is returned (with every line it can blame); unknown
// fields and values of the wrong shape are collected in File.Unknown.
func Load(name string) (*File, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	return Parse(name, data)
}

// bom is the UTF-8 byte order mark some Windows editors write first. YAML
// allows it at the start of a stream; go-yaml would take it as part of
// the first key.
var bom = []byte("\xef\xbb\xbf")

// Parse is Load on bytes already read; name is used in messages.
func Parse(name string, data []byte) (*File, error) {
	f := &File{Name: name}
	data = bytes.TrimPrefix(data, bom)
	astFile, err := parser.ParseBytes(data, 0)
	if err != nil {
		return nil, f.syntaxError(data, err)
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
	if r := f.inspect(f.root, reflect.TypeOf(Config{}), ""); r != nil {
		f.root = r
	}
	if err := f.decode(); err != nil {
		return nil, err
	}
	f.habits()
	f.Config.setDefaults()
	return f, nil
}

// Shadowed reports whether a problem already reported in Unknown covers
// path: the field itself, or one inside it. An error about a shadowed path
// is a knock-on of that problem and is not worth printing.
func (f *File) Shadowed(path string) bool {
	for _, s := range f.shadow {
		if path == s || strings.HasPrefix(path, s) && (path[len(s)] == '.' || path[len(s)] == '[') {
			return true
		}
	}
	return false
}

// problem records a decoding problem at path (and the line of node n, if
// set, else of path) and shadows path.
func (f *File) problem(n ast.Node, path, format string, args ...any) {
	line := 0
	if n != nil {
		line = lineOfNode(n)
	} else {
		line = f.Line(path)
	}
	f.Unknown = append(f.Unknown, &Error{File: f.Name, Line: line, Path: path, Msg: fmt.Sprintf(format, args...)})
	f.shadow = append(f.shadow, path)
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

// inspect walks the YAML tree against the Go type t and reports, all at
// once, every key that has no field and every value of the wrong shape (a
// list where one value is wanted, text where a number is). It returns a
// replacement for n when n is of the wrong shape, so that decoding the
// rest of the file succeeds: an empty mapping where a mapping is wanted
// (an empty cors block warns about nothing its error does not already
// say), else null.
func (f *File) inspect(n ast.Node, t reflect.Type, path string) ast.Node {
	n = unwrap(n)
	if _, ok := n.(*ast.AliasNode); ok || n == nil {
		return nil // the decoder resolves aliases; their target is inspected
	}
	if _, ok := n.(*ast.NullNode); ok {
		return nil
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if custom(t) {
		if err := tryDecode(n, t); err != nil {
			f.problem(n, path, "%s", strings.TrimSpace(yamlMessage(err)))
			return ast.Null(n.GetToken())
		}
		return nil
	}
	switch t.Kind() {
	case reflect.Struct:
		m, ok := n.(*ast.MappingNode)
		if !ok {
			f.shapeProblem(n, t, path)
			return ast.Mapping(n.GetToken(), true)
		}
		fields := yamlFields(t)
		for _, kv := range m.Values {
			key := kv.Key.GetToken().Value
			ft, ok := fields[key]
			if !ok {
				f.unknownField(kv, key, path, fields)
				continue
			}
			if r := f.inspect(kv.Value, ft, join(path, key)); r != nil {
				kv.Value = r
			}
		}
	case reflect.Map:
		m, ok := n.(*ast.MappingNode)
		if !ok {
			f.shapeProblem(n, t, path)
			return ast.Mapping(n.GetToken(), true)
		}
		for _, kv := range m.Values {
			if r := f.inspect(kv.Value, t.Elem(), join(path, kv.Key.GetToken().Value)); r != nil {
				kv.Value = r
			}
		}
	case reflect.Slice:
		s, ok := n.(*ast.SequenceNode)
		if !ok {
			f.shapeProblem(n, t, path)
			return ast.Null(n.GetToken())
		}
		for i, v := range s.Values {
			if r := f.inspect(v, t.Elem(), path+"["+strconv.Itoa(i)+"]"); r != nil {
				s.Values[i] = r
			}
		}
	case reflect.Interface:
	default:
		if !isScalar(n) {
			f.shapeProblem(n, t, path)
			return ast.Null(n.GetToken())
		}
		if err := tryDecode(n, t); err != nil {
			f.shapeProblem(n, t, path)
			return ast.Null(n.GetToken())
		}
	}
	return nil
}

// custom reports whether t decodes itself (config.Money, durations
// parsed by the YAML library): only decoding can tell what it accepts.
func custom(t reflect.Type) bool {
	if t == reflect.TypeOf(time.Duration(0)) {
		return true
	}
	p := reflect.PointerTo(t)
	for _, i := range []reflect.Type{
		reflect.TypeOf((*yaml.BytesUnmarshaler)(nil)).Elem(),
		reflect.TypeOf((*yaml.InterfaceUnmarshaler)(nil)).Elem(),
		reflect.TypeOf((*yaml.NodeUnmarshaler)(nil)).Elem(),
		reflect.TypeOf((*encoding.TextUnmarshaler)(nil)).Elem(),
	} {
		if p.Implements(i) {
			return true
		}
	}
	return false
}

// tryDecode decodes n alone into a new t, to learn whether the decoder
// accepts it there.
func tryDecode(n ast.Node, t reflect.Type) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("cannot decode: %v", r)
		}
	}()
	return yaml.NodeToValue(n, reflect.New(t).Interface())
}

func yamlMessage(err error) string {
	var ye yaml.Error
	if errors.As(err, &ye) {
		return ye.GetMessage()
	}
	return err.Error()
}

func isScalar(n ast.Node) bool {
	switch n.(type) {
	case *ast.MappingNode, *ast.MappingValueNode, *ast.SequenceNode:
		return false
	}
	return true
}

// shapeProblem reports a value of the wrong shape at path, saying what to
// write instead. Values under secrets are never repeated: a user who wrote
// a key inline has just pasted a credential.
func (f *File) shapeProblem(n ast.Node, t reflect.Type, path string) {
	key := path
	if i := strings.LastIndexAny(path, ".]"); i >= 0 && path[i] == '.' {
		key = path[i+1:]
	}
	secretPath := path == "secrets" || strings.HasPrefix(path, "secrets.") || strings.Contains(path, ".secrets")
	m, isMap := n.(*ast.MappingNode)
	_, isSeq := n.(*ast.SequenceNode)
	switch {
	case t.Kind() == reflect.String && isMap && m.IsFlowStyle:
		// X-Api-Key: {secret.gh} is a YAML mapping {"secret.gh": null}.
		if text, ok := placeholderText(m); ok {
			f.problem(n, path, "a value that starts with { is read as a YAML mapping: quote it: %s: %q", key, text)
		} else {
			f.problem(n, path, `a value that starts with { is read as a YAML mapping: quote the value ("...")`)
		}
	case t == reflect.TypeOf(SecretSource{}) && !isMap:
		// secrets: { github: ghp_... }
		name := key
		f.problem(n, path, "a secret's value is never written in the file (anyone who reads the file, its history or a backup has it): "+
			"write %s: { env: %s } and export %s=..., or %s: { file: PATH }", name, envName(name), envName(name), name)
	case t.Kind() == reflect.Slice && !isMap && !isSeq:
		if v := scalarText(n); v != "" && !secretPath {
			f.problem(n, path, "want a list: %s: [%s]", key, yamlInline(v))
		} else {
			f.problem(n, path, "want a list: %s: [a, b]", key)
		}
	case t.Kind() == reflect.Slice:
		f.problem(n, path, "want a list (%s: [a, b]), not a mapping", key)
	case t.Kind() == reflect.Struct || t.Kind() == reflect.Map:
		what := "a mapping (name: value lines under it)"
		if t.Kind() == reflect.Struct {
			names := slices.Sorted(maps.Keys(yamlFields(t)))
			if len(names) <= 4 {
				what = "a mapping with " + strings.Join(names, ", ")
			}
		}
		got := "a single value"
		if isSeq {
			got = "a list"
		}
		f.problem(n, path, "want %s, not %s", what, got)
	case isMap || isSeq:
		got := "a mapping"
		if isSeq {
			got = "a list"
		}
		f.problem(n, path, "want a single value, not %s", got)
	case t.Kind() == reflect.Bool:
		f.problem(n, path, "want true or false")
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Float64:
		f.problem(n, path, "want a number")
	default:
		f.problem(n, path, "cannot be decoded as %s", t.Kind())
	}
}

// placeholderText rebuilds the text of a flow mapping that was meant as a
// placeholder ({secret.gh} → "{secret.gh}"), if that is what it is.
func placeholderText(m *ast.MappingNode) (string, bool) {
	if len(m.Values) != 1 {
		return "", false
	}
	kv := m.Values[0]
	if _, null := unwrap(kv.Value).(*ast.NullNode); !null {
		return "", false
	}
	name := kv.Key.GetToken().Value
	ns, rest, dotted := strings.Cut(name, ".")
	switch {
	case dotted && (ns == "secret" || ns == "stage" || ns == "caller") && rest != "":
	case !dotted && len(name) <= 32 && validIdent(name):
	default:
		return "", false
	}
	return "{" + name + "}", true
}

func validIdent(s string) bool {
	for i, c := range s {
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || i > 0 && (c == '-' || c >= '0' && c <= '9')) {
			return false
		}
	}
	return s != ""
}

func scalarText(n ast.Node) string {
	if tk := n.GetToken(); tk != nil {
		return tk.Value
	}
	return ""
}

// yamlInline writes v as a YAML flow scalar: bare when that reads back as
// the same text, else double-quoted.
func yamlInline(v string) string {
	for _, c := range v {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("-_./", c)) {
			return strconv.Quote(v)
		}
	}
	if v == "" || strings.ContainsAny(v[:1], "-.") {
		return strconv.Quote(v)
	}
	return v
}

// envName is the environment variable a suggestion names for a secret:
// GITHUB_TOKEN for github.
func envName(secret string) string {
	e := strings.ToUpper(strings.NewReplacer("-", "_", ".", "_").Replace(secret))
	if !strings.HasSuffix(e, "_TOKEN") && !strings.HasSuffix(e, "_KEY") && !strings.HasSuffix(e, "_SECRET") {
		e += "_TOKEN"
	}
	return e
}

// unknownField reports a key with no field, with the likeliest field the
// user meant, and shadows that field: it is unset because of the typo.
func (f *File) unknownField(kv *ast.MappingValueNode, key, path string, fields map[string]reflect.Type) {
	line := kv.Key.GetToken().Position.Line
	add := func(msg string) {
		f.Unknown = append(f.Unknown, &Error{File: f.Name, Line: line, Path: join(path, key), Msg: msg})
	}
	if _, ok := fields["env"]; ok && len(fields) == 2 && secretValueKeys[strings.ToLower(key)] {
		add("a secret's value is never written in the file: use env: VARIABLE (or file: PATH) and put the value there")
		f.shadow = append(f.shadow, path)
		return
	}
	best := suggestField(key, fields)
	if best != "" {
		add(fmt.Sprintf("unknown field (did you mean %q?)", best))
		f.shadow = append(f.shadow, join(path, best))
		if _, ok := fields["env"]; ok && len(fields) == 2 {
			// A secret's source is checked as a whole ("set exactly one
			// of env or file"), on the secret.
			f.shadow = append(f.shadow, path)
		}
		return
	}
	route := yamlFields(reflect.TypeOf(Route{}))
	top := yamlFields(reflect.TypeOf(Config{}))
	if parent, child := nestedField(key, fields); parent != "" {
		// allowOrigins on a route: a field of the route's cors block.
		add(fmt.Sprintf("unknown field: %s is a field of %s: write %s: { %s: ... }", child, parent, parent, child))
		f.shadow = append(f.shadow, join(path, parent))
		return
	}
	switch {
	case path == "" && route[key] != nil:
		add(fmt.Sprintf("unknown field: %s is a field of each route (indent it under a route in routes:)", key))
	case isRoutePath(path) && top[key] != nil:
		add(fmt.Sprintf("unknown field: %s belongs at the top level of the file, not in a route", key))
	default:
		add("unknown field" + known(fields))
	}
}

// nestedField finds key (in any spelling) among the fields of the blocks
// one level down: allow_origins on a route belongs in its cors block.
func nestedField(key string, fields map[string]reflect.Type) (parent, child string) {
	for _, name := range slices.Sorted(maps.Keys(fields)) {
		t := fields[name]
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct || custom(t) {
			continue
		}
		sub := yamlFields(t)
		if _, ok := sub[snake(key)]; ok {
			return name, snake(key)
		}
		for field, names := range aliases {
			if _, ok := sub[field]; ok && slices.Contains(names, snake(key)) {
				return name, field
			}
		}
	}
	return "", ""
}

// secretValueKeys are keys people write under secrets.NAME for the value
// itself.
var secretValueKeys = map[string]bool{"value": true, "val": true, "key": true, "token": true, "secret": true, "password": true, "data": true}

func isRoutePath(path string) bool {
	return strings.HasPrefix(path, "routes[") && !strings.Contains(path, ".")
}

// aliases are names other gateways and cloud consoles give keyward's
// fields.
var aliases = map[string][]string{
	"upstream":      {"url", "uri", "target", "backend", "upstream_url", "endpoint", "proxy_pass", "destination", "integration", "origin_url", "forward_to"},
	"methods":       {"method", "http_method", "http_methods", "verbs", "verb"},
	"path":          {"route", "pattern", "resource", "path_pattern", "public_path"},
	"allow_origins": {"origins", "origin", "allowed_origins", "allow_origin", "access_control_allow_origin"},
	"allow_headers": {"allowed_headers", "allow_header"},
	"allow_methods": {"allowed_methods", "allow_method"},
	"env":           {"environment", "env_var", "envvar", "variable", "var"},
	"file":          {"filename", "file_path", "filepath"},
	"headers":       {"header"},
	"secrets":       {"secret", "keys", "credentials"},
	"stages":        {"stage", "environments"},
	"vars":          {"variables", "stage_variables", "stagevariables"},
}

// suggestField names the known field closest to a misspelt key: the same
// name in another spelling (camelCase, dashes, capitals), a name another
// gateway uses for it, or a small edit away. "" if none is close.
func suggestField(key string, fields map[string]reflect.Type) string {
	norm := snake(key)
	if _, ok := fields[norm]; ok {
		return norm
	}
	for field, names := range aliases {
		if _, ok := fields[field]; ok && slices.Contains(names, norm) {
			return field
		}
	}
	names := slices.Sorted(maps.Keys(fields))
	best, bestD := "", 3
	for _, n := range names {
		if d := distance(norm, n); d < bestD {
			best, bestD = n, d
		}
	}
	return best
}

// snake spells camelCase, dashed and capitalised names the way keyward's
// fields are spelt: allowOrigins, allow-origins, Allow_Origins → allow_origins.
func snake(s string) string {
	var b strings.Builder
	for i, c := range s {
		switch {
		case c >= 'A' && c <= 'Z':
			if i > 0 && s[i-1] >= 'a' && s[i-1] <= 'z' {
				b.WriteByte('_')
			}
			b.WriteRune(c + 'a' - 'A')
		case c == '-' || c == ' ':
			b.WriteByte('_')
		default:
			b.WriteRune(c)
		}
	}
	return b.String()
}

func known(fields map[string]reflect.Type) string {
	return " (known: " + strings.Join(slices.Sorted(maps.Keys(fields)), ", ") + ")"
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
	line, _ := f.lookup(path)
	return line
}

// Has reports whether the file writes the value at path (a default
// applies where it does not).
func (f *File) Has(path string) bool {
	_, found := f.lookup(path)
	return found
}

func (f *File) lookup(path string) (line int, found bool) {
	n := f.root
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
			return line, false
		}
		n = next
	}
	return line, n != nil
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
	if s.Engine == "" {
		s.Engine = "keyward"
	}
	c.TLS.setDefaults()
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
