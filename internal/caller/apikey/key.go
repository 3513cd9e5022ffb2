// Package apikey verifies callers that present an API key made with
// `keyward keys create`. A key is shown once, when it is made; only its
// SHA-256 hash is stored, in a Store (the keys file, or with Redis the
// shared store), with the key's kind, name, dates and optional plan.
//
// A key reads kw_<43 base62 characters: 32 random bytes><6 base62
// characters: CRC32 of what precedes>. The prefix and the checksum let
// secret scanners find leaked keys with few false positives (the scheme
// of GitHub's tokens), and let keyward refuse a mistyped key without a
// store lookup.
package apikey

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/big"
	"strings"
)

// Prefix starts every key.
const Prefix = "kw_"

const (
	randomBytes = 32
	randomChars = 43 // 62^43 > 2^256
	crcChars    = 6  // 62^6 > 2^32
	// KeyLen is the length of every key.
	KeyLen = len(Prefix) + randomChars + crcChars
)

const base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// Hash is the SHA-256 of a key, the only form a store keeps.
type Hash [32]byte

// String is "sha256:" and the hash in hex, the form the keys file holds.
func (h Hash) String() string { return "sha256:" + hex.EncodeToString(h[:]) }

// ParseHash reads the form String writes.
func ParseHash(s string) (Hash, error) {
	var h Hash
	hexed, ok := strings.CutPrefix(s, "sha256:")
	b, err := hex.DecodeString(hexed)
	if !ok || err != nil || len(b) != len(h) {
		return h, fmt.Errorf("bad key hash %q: want sha256: and 64 hex digits", s)
	}
	copy(h[:], b)
	return h, nil
}

// HashOf returns the hash of key.
func HashOf(key string) Hash { return sha256.Sum256([]byte(key)) }

// Generate returns a new key read from random (crypto/rand.Reader in
// production), and its hash.
func Generate(random io.Reader) (string, Hash, error) {
	b := make([]byte, randomBytes)
	if _, err := io.ReadFull(random, b); err != nil {
		return "", Hash{}, fmt.Errorf("reading random bytes: %w", err)
	}
	var sb strings.Builder
	sb.Grow(KeyLen)
	sb.WriteString(Prefix)
	appendBase62(&sb, new(big.Int).SetBytes(b), randomChars)
	body := sb.String()
	appendBase62(&sb, new(big.Int).SetUint64(uint64(crc32.ChecksumIEEE([]byte(body)))), crcChars)
	key := sb.String()
	return key, HashOf(key), nil
}

// appendBase62 writes n in base62, most significant first, left-padded
// with '0' to width characters.
func appendBase62(sb *strings.Builder, n *big.Int, width int) {
	digits := make([]byte, width)
	base := big.NewInt(62)
	mod := new(big.Int)
	for i := width - 1; i >= 0; i-- {
		n.DivMod(n, base, mod)
		digits[i] = base62[mod.Int64()]
	}
	sb.Write(digits)
}

// ErrFormat is returned by Check for a string that is not a well-formed
// key. It says nothing about which part is wrong.
var ErrFormat = errors.New("not a keyward API key (kw_ and 49 base62 characters with a valid checksum)")

// Check reports whether key is well formed: prefix, length, alphabet and
// checksum.
func Check(key string) error {
	if len(key) != KeyLen || !strings.HasPrefix(key, Prefix) {
		return ErrFormat
	}
	var crc uint64
	for i := len(Prefix); i < KeyLen; i++ {
		d := digit(key[i])
		if d < 0 {
			return ErrFormat
		}
		if i >= KeyLen-crcChars {
			crc = crc*62 + uint64(d)
		}
	}
	if crc != uint64(crc32.ChecksumIEEE([]byte(key[:KeyLen-crcChars]))) {
		return ErrFormat
	}
	return nil
}

func digit(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'A' && c <= 'Z':
		return int(c-'A') + 10
	case c >= 'a' && c <= 'z':
		return int(c-'a') + 36
	}
	return -1
}
