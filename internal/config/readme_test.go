package config

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

// TestReadmeDocumentsEveryField: every field a config file may hold is
// named in the README's config reference, so a new field cannot ship
// undocumented.
func TestReadmeDocumentsEveryField(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	ref := string(readme)
	if i := strings.Index(ref, "## Config reference"); i >= 0 {
		ref = ref[i:]
	}
	seen := map[reflect.Type]bool{}
	var walk func(typ reflect.Type, path string)
	walk = func(typ reflect.Type, path string) {
		for typ.Kind() == reflect.Pointer || typ.Kind() == reflect.Slice || typ.Kind() == reflect.Map {
			typ = typ.Elem()
		}
		if typ.Kind() != reflect.Struct || seen[typ] {
			return
		}
		seen[typ] = true
		for i := 0; i < typ.NumField(); i++ {
			f := typ.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if name == "" || name == "-" {
				walk(f.Type, path)
				continue
			}
			// `name`, `parent.name`, `name.child`, or inside a
			// `{a, name, b}` list of a kind's fields.
			q := regexp.QuoteMeta(name)
			if !regexp.MustCompile("[`.{,] *" + q + " *[`.,}:]").MatchString(ref) {
				t.Errorf("%s%s is not in README.md's config reference", path, name)
			}
			walk(f.Type, path+name+".")
		}
	}
	walk(reflect.TypeOf(Config{}), "")
}
