package validate

import "github.com/keyward/keyward/internal/config"

// DefaultMaxBodyBytes is the body bound used when
// config.Validate.MaxBodyBytes is zero: enough for any form, small enough
// that schema validation stays cheap.
const DefaultMaxBodyBytes = 1 << 20

// Error is one problem found while compiling a config.Validate block, its
// Path relative to the block (config.BlockError).
type Error = config.BlockError

// Errors is every problem found in one block, reported together.
type Errors = config.BlockErrors
