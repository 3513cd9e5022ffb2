package cli

import (
	"os"
	"testing"
)

// TestLogFormatNotATerminal: the text log is for terminals; /dev/null (a
// character device, but not a terminal), a pipe or a file get JSON.
func TestLogFormatNotATerminal(t *testing.T) {
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer devnull.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	for name, f := range map[string]*os.File{"/dev/null": devnull, "a pipe": w} {
		if got := logFormat("", f); got != "json" {
			t.Errorf("%s: %s, want json", name, got)
		}
	}
	if got := logFormat("text", devnull); got != "text" {
		t.Errorf("log.format: text is not obeyed: %s", got)
	}
}
