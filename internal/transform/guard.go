package transform

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"strings"

	"github.com/itchyny/gojq"
)

// Bounding gojq.
//
// gojq checks the context before every opcode, so a loop (`def f: f; f`,
// `repeat(1)`, `range(1e9)`) stops at the deadline and a value built one
// element at a time grows only as far as the deadline lets it (tens of MB).
// What the context cannot stop is a single step that allocates a lot:
// `"x" * 1e9` (a 1 GB string), `.[5e8] = 1` (an 8 GB array), doubling a
// string with `+`, or a materializing builtin (tojson, flatten, join, add,
// sort...) applied to a value that is small in memory but huge once written
// out, because jq values share structure: `reduce range(40) as $i (1; [., .])`
// is 40 small arrays that encode to 2^40 leaves.
//
// So before such a step runs, a guard checks what it would produce:
//   - `+` and `*` (and `+=`, `*=`) are rewritten into calls that check the
//     size of the result first, in O(1) for strings and arrays;
//   - an array index on the left of an assignment, and setpath, may not
//     exceed the bound;
//   - materializing builtins are shadowed by definitions that first measure
//     their input's encoded size, stopping the walk at the bound, so the
//     check costs at most the bound and never the shared-structure size.
//
// Left over, and documented: comparisons (==, <) and keys of a value built
// deliberately by structure sharing walk it whole without checking the
// context. No real body mapping builds such a value; an operator who writes
// one has written a loop.

// reserved prefixes the names the guards use; user expressions may not use
// it, so they cannot reach an unguarded builtin through the shadowing defs.
const reserved = "__kw_"

// secretVar is the variable a request transform reads secrets from.
const secretVar = "$secret"

// guardedFuncs are the builtins (name/arity) whose work is proportional to
// the encoded size of their input, which may be far more than the memory
// it holds. Each is shadowed by `def NAME: __kw_guard | __kw_o_NAME;`.
var guardedFuncs = []struct {
	name  string
	arity int
}{
	{"tojson", 0}, {"tostring", 0}, {"format", 1},
	{"_tohtml", 0}, {"_touri", 0}, {"_tocsv", 0}, {"_totsv", 0}, {"_tosh", 0},
	{"_tobase64", 0},
	{"flatten", 0}, {"flatten", 1}, {"add", 0}, {"join", 1}, {"implode", 0},
	{"sort", 0}, {"sort_by", 1}, {"group_by", 1}, {"unique", 0}, {"unique_by", 1},
	{"min", 0}, {"max", 0}, {"min_by", 1}, {"max_by", 1},
	{"contains", 1}, {"inside", 1}, {"indices", 1}, {"index", 1}, {"rindex", 1},
	{"tostream", 0}, {"to_entries", 0}, {"with_entries", 1}, {"walk", 1},
	{"combinations", 0}, {"combinations", 1}, {"transpose", 0},
}

// prelude returns the guard definitions to prepend to a user expression.
// It parses afresh each time so no two compiled programs share AST nodes.
func prelude() []*gojq.FuncDef {
	var b strings.Builder
	for _, f := range guardedFuncs {
		params, args := "", ""
		if f.arity > 0 {
			p := make([]string, f.arity)
			for i := range p {
				p[i] = fmt.Sprintf("a%d", i)
			}
			params = "(" + strings.Join(p, "; ") + ")"
			args = params
		}
		// The original is captured before the shadowing def exists.
		fmt.Fprintf(&b, "def %so_%s%s: %s%s; ", reserved, f.name, params, f.name, args)
		fmt.Fprintf(&b, "def %s%s: %sguard | %so_%s%s; ", f.name, params, reserved, reserved, f.name, args)
	}
	// add(f) is defined in jq as `[f] | add`; redefined so the inner add is
	// the guarded one.
	b.WriteString("def add(f): [f] | add; ")
	b.WriteString("def __kw_o_setpath($p; $v): setpath($p; $v); ")
	b.WriteString("def setpath($p; $v): __kw_path($p) | __kw_o_setpath($p; $v); ")
	b.WriteString("def __kw_add(l; r): r as $r | l as $l | __kw_addok($l; $r) | $l + $r; ")
	b.WriteString("def __kw_mul(l; r): r as $r | l as $l | __kw_mulok($l; $r) | $l * $r; ")
	b.WriteString(".")
	q, err := gojq.Parse(b.String())
	if err != nil {
		panic("transform: prelude: " + err.Error())
	}
	return q.FuncDefs
}

// guardFuncs returns the Go side of the guards, bound to the size limit.
func guardFuncs(limit int64) []gojq.CompilerOption {
	return []gojq.CompilerOption{
		gojq.WithFunction(reserved+"guard", 0, 0, func(v any, _ []any) any {
			if encodedSize(v, limit) > limit {
				return tooLarge(limit)
			}
			return v
		}),
		gojq.WithFunction(reserved+"addok", 2, 2, func(v any, xs []any) any {
			if shallowSize(xs[0])+shallowSize(xs[1]) > limit {
				return tooLarge(limit)
			}
			return v
		}),
		gojq.WithFunction(reserved+"mulok", 2, 2, func(v any, xs []any) any {
			if mulSize(xs[0], xs[1]) > limit {
				return tooLarge(limit)
			}
			return v
		}),
		gojq.WithFunction(reserved+"path", 1, 1, func(v any, xs []any) any {
			p, ok := xs[0].([]any)
			if !ok {
				return v // setpath reports the type error itself
			}
			for _, k := range p {
				if f, ok := gojq.ToFloat64(k); ok && f > float64(limit) {
					return tooLarge(limit)
				}
			}
			return v
		}),
		gojq.WithFunction(reserved+"index", 0, 0, func(v any, _ []any) any {
			if f, ok := gojq.ToFloat64(v); ok && f > float64(limit) {
				return tooLarge(limit)
			}
			return v
		}),
	}
}

// errTooLargeValue is what a guard returns inside gojq. It is a plain error,
// so `try` can catch it (harmlessly: nothing was allocated), and it carries
// no value, so it can never quote a secret.
type errTooLargeValue struct{ limit int64 }

func (e *errTooLargeValue) Error() string {
	return fmt.Sprintf("value would exceed %d bytes", e.limit)
}

func tooLarge(limit int64) error { return &errTooLargeValue{limit} }

// shallowSize is the size a `+` result adds: string bytes, or 16 bytes per
// array element and object entry (the interface value each costs).
func shallowSize(v any) int64 {
	switch v := v.(type) {
	case string:
		return int64(len(v))
	case []any:
		return 16 * int64(len(v))
	case map[string]any:
		return 16 * int64(len(v))
	case *big.Int:
		return int64(v.BitLen() / 8)
	}
	return 8
}

// mulSize estimates the size of `l * r`: string repetition, a big integer
// product, or an object merge.
func mulSize(l, r any) int64 {
	if s, ok := l.(string); ok {
		l, r = r, s
	}
	if s, ok := r.(string); ok {
		n, ok := gojq.ToFloat64(l)
		if !ok || n <= 0 || math.IsNaN(n) {
			return 0
		}
		return int64(math.Min(float64(len(s))*n, math.MaxInt64/2))
	}
	return shallowSize(l) + shallowSize(r)
}

// encodedSize returns the length of v encoded as JSON, or a number above
// limit as soon as it knows the length exceeds limit: the walk stops there,
// so its cost is bounded by limit however much structure v shares.
func encodedSize(v any, limit int64) int64 {
	n := int64(0)
	var walk func(v any) bool
	walk = func(v any) bool {
		switch v := v.(type) {
		case string:
			n += int64(len(v)) + 2
		case []any:
			n += 2
			for _, x := range v {
				n++
				if !walk(x) {
					return false
				}
			}
		case map[string]any:
			n += 2
			for k, x := range v {
				n += int64(len(k)) + 4
				if !walk(x) {
					return false
				}
			}
		case *big.Int:
			n += int64(v.BitLen()/3 + 2)
		case json.Number:
			n += int64(len(v))
		default:
			n += 8
		}
		return n <= limit
	}
	walk(v)
	return n
}

// checkSource walks a parsed user expression: it rejects reserved names,
// rejects $secret in response transforms and any read of it other than
// $secret.NAME, collects the secret names read, and rewrites the steps that
// can allocate much at once into guarded forms. It returns the problems
// found, each a message without position (gojq's AST keeps none).
func checkSource(q *gojq.Query, allowSecrets bool) (secrets []string, problems []string) {
	w := &walker{allowSecrets: allowSecrets, seen: map[string]bool{}}
	w.query(q)
	return w.secrets, w.problems
}

type walker struct {
	allowSecrets bool
	seen         map[string]bool
	secrets      []string
	problems     []string
}

func (w *walker) problem(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	for _, p := range w.problems {
		if p == msg {
			return
		}
	}
	w.problems = append(w.problems, msg)
}

func (w *walker) query(q *gojq.Query) {
	if q == nil {
		return
	}
	if len(q.Imports) > 0 || q.Meta != nil {
		w.problem("modules and imports are not supported")
	}
	for _, fd := range q.FuncDefs {
		if strings.HasPrefix(fd.Name, reserved) {
			w.problem("the name %s is reserved", fd.Name)
		}
		for _, a := range fd.Args {
			w.bindName(a)
		}
		w.query(fd.Body)
	}
	for _, p := range q.Patterns {
		w.pattern(p)
	}
	w.term(q.Term)
	w.query(q.Left)
	w.query(q.Right)
	switch q.Op {
	case gojq.OpAdd, gojq.OpMul:
		name := reserved + "add"
		if q.Op == gojq.OpMul {
			name = reserved + "mul"
		}
		q.Term = funcTerm(name, q.Left, q.Right)
		q.Left, q.Right, q.Op = nil, nil, 0
	case gojq.OpUpdateAdd, gojq.OpUpdateMul:
		// jq defines `l += r` as `r as $x | l |= . + $x`; spelled out so
		// the `+` goes through the guard.
		name := reserved + "add"
		if q.Op == gojq.OpUpdateMul {
			name = reserved + "mul"
		}
		w.guardIndexes(q.Left)
		v := &gojq.Query{Term: &gojq.Term{Type: gojq.TermTypeFunc, Func: &gojq.Func{Name: "$" + reserved + "v"}}}
		update := &gojq.Query{Left: q.Left, Op: gojq.OpModify, Right: &gojq.Query{Term: funcTerm(name, &gojq.Query{Term: &gojq.Term{Type: gojq.TermTypeIdentity}}, v)}}
		q.Left, q.Patterns, q.Op, q.Right = q.Right, []*gojq.Pattern{{Name: "$" + reserved + "v"}}, gojq.OpPipe, update
	case gojq.OpAssign, gojq.OpModify, gojq.OpUpdateSub, gojq.OpUpdateDiv, gojq.OpUpdateMod, gojq.OpUpdateAlt:
		w.guardIndexes(q.Left)
	}
}

// guardIndexes makes every computed array index in an assignment's path
// pass the bound, so `.[1e9] = 1` fails instead of allocating the array.
func (w *walker) guardIndexes(q *gojq.Query) {
	var walkQ func(q *gojq.Query)
	var walkT func(t *gojq.Term)
	walkQ = func(q *gojq.Query) {
		if q == nil {
			return
		}
		walkT(q.Term)
		walkQ(q.Left)
		walkQ(q.Right)
	}
	walkT = func(t *gojq.Term) {
		if t == nil {
			return
		}
		guard := func(x *gojq.Index) {
			if x != nil && x.Start != nil && !x.IsSlice {
				x.Start = &gojq.Query{Left: x.Start, Op: gojq.OpPipe, Right: &gojq.Query{Term: funcTerm(reserved + "index")}}
			}
		}
		guard(t.Index)
		for _, s := range t.SuffixList {
			guard(s.Index)
		}
		if t.Type == gojq.TermTypeQuery {
			walkQ(t.Query)
		}
	}
	walkQ(q)
}

func (w *walker) bindName(name string) {
	if name == secretVar {
		w.problem("%s is reserved for secrets and cannot be bound", secretVar)
	}
	if strings.HasPrefix(strings.TrimPrefix(name, "$"), reserved) {
		w.problem("the name %s is reserved", name)
	}
}

func (w *walker) pattern(p *gojq.Pattern) {
	if p == nil {
		return
	}
	if p.Name != "" {
		w.bindName(p.Name)
	}
	for _, x := range p.Array {
		w.pattern(x)
	}
	for _, o := range p.Object {
		if o.Key != "" {
			w.bindName(o.Key)
		}
		w.str(o.KeyString)
		w.query(o.KeyQuery)
		w.pattern(o.Val)
	}
}

func (w *walker) str(s *gojq.String) {
	if s != nil {
		for _, q := range s.Queries {
			w.query(q)
		}
	}
}

func (w *walker) index(x *gojq.Index) {
	if x != nil {
		w.str(x.Str)
		w.query(x.Start)
		w.query(x.End)
	}
}

func (w *walker) term(t *gojq.Term) {
	if t == nil {
		return
	}
	if t.Type == gojq.TermTypeFunc && t.Func != nil {
		w.funcTerm(t)
	}
	w.index(t.Index)
	if t.Object != nil {
		for _, kv := range t.Object.KeyVals {
			if strings.HasPrefix(kv.Key, "$") {
				// `{$secret}` is shorthand for `{secret: $secret}`.
				w.variable(kv.Key, nil)
			}
			w.str(kv.KeyString)
			w.query(kv.KeyQuery)
			w.query(kv.Val)
		}
	}
	if t.Array != nil {
		w.query(t.Array.Query)
	}
	if t.Unary != nil {
		w.term(t.Unary.Term)
	}
	w.str(t.Str)
	if t.If != nil {
		w.query(t.If.Cond)
		w.query(t.If.Then)
		for _, e := range t.If.Elif {
			w.query(e.Cond)
			w.query(e.Then)
		}
		w.query(t.If.Else)
	}
	if t.Try != nil {
		w.query(t.Try.Body)
		w.query(t.Try.Catch)
	}
	if r := t.Reduce; r != nil {
		w.query(r.Query)
		for _, p := range r.Patterns {
			w.pattern(p)
		}
		w.query(r.Start)
		w.query(r.Update)
	}
	if f := t.Foreach; f != nil {
		w.query(f.Query)
		for _, p := range f.Patterns {
			w.pattern(p)
		}
		w.query(f.Start)
		w.query(f.Update)
		w.query(f.Extract)
	}
	if t.Label != nil {
		w.query(t.Label.Body)
	}
	w.query(t.Query)
	for _, s := range t.SuffixList {
		w.index(s.Index)
	}
}

func (w *walker) funcTerm(t *gojq.Term) {
	name := t.Func.Name
	if strings.HasPrefix(strings.TrimPrefix(name, "$"), reserved) {
		w.problem("the name %s is reserved", name)
	}
	for _, a := range t.Func.Args {
		w.query(a)
	}
	if name == secretVar {
		var first *gojq.Suffix
		if len(t.SuffixList) > 0 {
			first = t.SuffixList[0]
		}
		w.variable(name, first)
	}
}

// variable handles a read of a $secret-like variable followed by suffix.
func (w *walker) variable(name string, suffix *gojq.Suffix) {
	if name != secretVar {
		return
	}
	if !w.allowSecrets {
		w.problem("a response transform cannot read %s: its output is sent to the client", secretVar)
		return
	}
	if suffix == nil || suffix.Index == nil {
		w.problem("read secrets one at a time as %s.NAME, so the config can be checked for unknown secrets", secretVar)
		return
	}
	x := suffix.Index
	key := x.Name
	if x.Str != nil && len(x.Str.Queries) == 0 {
		key = x.Str.Str
	}
	if s := constString(x.Start); key == "" && s != "" && x.End == nil && !x.IsSlice {
		key = s
	}
	if key == "" {
		w.problem("read secrets one at a time as %s.NAME, so the config can be checked for unknown secrets", secretVar)
		return
	}
	if !w.seen[key] {
		w.seen[key] = true
		w.secrets = append(w.secrets, key)
	}
}

func constString(q *gojq.Query) string {
	if q == nil || q.Term == nil || q.Term.Type != gojq.TermTypeString || q.Term.Str == nil || len(q.Term.Str.Queries) > 0 || len(q.Term.SuffixList) > 0 {
		return ""
	}
	return q.Term.Str.Str
}

func funcTerm(name string, args ...*gojq.Query) *gojq.Term {
	return &gojq.Term{Type: gojq.TermTypeFunc, Func: &gojq.Func{Name: name, Args: args}}
}

// errorsAsTooLarge reports whether err came from a size guard.
func errorsAsTooLarge(err error) bool {
	var e *errTooLargeValue
	return errors.As(err, &e)
}
