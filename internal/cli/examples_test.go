package cli

import (
	"path/filepath"
	"testing"
)

// TestExamplesPassCheck keeps every file in examples/ valid and free of
// warnings.
func TestExamplesPassCheck(t *testing.T) {
	for _, env := range []string{"GITHUB_TOKEN", "MAPS_KEY", "OPENAI_API_KEY", "STRIPE_KEY", "MAILER_KEY", "TURNSTILE_SECRET", "ANTHROPIC_API_KEY", "GEMINI_API_KEY"} {
		t.Setenv(env, "example-secret-value")
	}
	t.Setenv("VISITOR_KEY", "example-visitor-signing-key-0123456789abcdef")
	files, err := filepath.Glob("../../examples/*.yaml")
	if err != nil || len(files) < 4 {
		t.Fatalf("examples: %v %v", files, err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			code, stdout, stderr := run(t, "check", "-c", f)
			if code != exitOK || stderr != "" {
				t.Errorf("exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
			}
		})
	}
}
