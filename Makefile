# keyward's developer and CI entry points. CI runs `make test` (.ci/run).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
# The steps of `test` depend on each other's order (deps before tests).
.NOTPARALLEL:

GO ?= go
# How long `make test` fuzzes each target; raise it for a longer hunt:
# make fuzz FUZZTIME=5m
FUZZTIME ?= 10s
# The version stamped into the binary; a checkout without git is "dev".
VERSION ?= $(or $(shell git describe --always --dirty 2>/dev/null),dev)
LDFLAGS := -X github.com/keyward/keyward/internal/gateway.Version=$(VERSION)
# Pinned so that a new release cannot break a build that did not change.
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: test deps vet unit fuzz build fmt lint bench soak clean

## test: install missing tools, vet, lint, run every test with -race, fuzz each target briefly (what CI runs)
test: deps vet lint unit fuzz

## deps: install chromium, redis-server and redis-sentinel (and what else the tests need) when missing (as root, with apt-get)
deps:
	./scripts/deps.sh

## vet: go vet every package
vet:
	$(GO) vet ./...

## unit: every test, with the race detector, never from the test cache
unit:
	$(GO) test -race -count=1 ./...

## fuzz: run each native fuzz target (func FuzzX in a _test.go file) for FUZZTIME;
## every target runs, and the run fails if any found a failure. Go 1.26's fuzz
## coordinator can report "context deadline exceeded" as -fuzztime ends, with no
## failing input (go.dev/issue/75804, fixed in Go 1.27): such a run is repeated
## once; a failing input, a panic or a second such failure fails the target.
fuzz:
	@targets=$$(grep -rE --include='*_test.go' --exclude-dir=testdata --exclude-dir=vendor --exclude-dir=.git \
		-o '^func Fuzz[A-Za-z0-9_]*\(' . | sed -E 's/^(.*):func (Fuzz[A-Za-z0-9_]*)\($$/\1:\2/' | sort -u); \
	if [[ -z $$targets ]]; then echo "fuzz: no targets"; exit 0; fi; \
	for t in $$targets; do \
		file=$${t%%:*}; name=$${t##*:}; \
		pkg=./$$(dirname "$${file#./}"); \
		for attempt in 1 2; do \
			echo "fuzz: $$pkg $$name for $(FUZZTIME)"; \
			out=$$($(GO) test -run='^$$' -fuzz="^$$name$$" -fuzztime=$(FUZZTIME) "$$pkg" 2>&1) && rc=0 || rc=$$?; \
			echo "$$out"; \
			if [[ $$rc == 0 ]]; then break; fi; \
			if [[ $$attempt == 1 ]] && grep -q 'context deadline exceeded' <<<"$$out" \
				&& ! grep -qE 'Failing input written|panic:' <<<"$$out"; then \
				echo "fuzz: $$name: Go's -fuzztime deadline race (go.dev/issue/75804), no failing input; once more"; \
				continue; \
			fi; \
			failed+=" $$pkg.$$name"; break; \
		done; \
	done; \
	if [[ -n $${failed-} ]]; then echo "fuzz: FAILED:$$failed"; exit 1; fi

## build: build bin/keyward with its version stamped in
build:
	$(GO) build -ldflags '$(LDFLAGS)' -o bin/keyward ./cmd/keyward

## fmt: gofmt every package
fmt:
	$(GO) fmt ./...

## lint: staticcheck every package
lint:
	$(GO) run $(STATICCHECK) ./...

## bench: Go micro-benchmarks with allocations (bench/results/micro.txt), then the
## side-by-side load run against nginx, caddy, haproxy and bare Go (bench/run.sh,
## see bench/README.md; it installs what it needs with apt-get when missing, as
## root; its knobs pass through the environment: DURATION=5 ROUNDS=1 make bench)
bench:
	mkdir -p bench/results
	$(GO) test -run='^$$' -bench=. -benchmem ./... | tee bench/results/micro.txt
	./bench/run.sh

## soak: issue 15's figures, measured (not part of test; about 13 minutes): the
## fault run (bench/faults.sh, about 75 s: 30 reloads, the upstream killed 7
## times, Redis killed and frozen, under a checked mixed load), then the
## 10-minute mixed soak and 10,000 idle connections (bench/soak.sh, about 11
## minutes); fails when a figure is not met; reports in bench/results/ (see
## docs/OPERATIONS.md); installs redis-server when missing (as root); knobs pass
## through the environment: DURATION=120 make soak. Both run even if the first fails.
soak:
	rc=0; ./bench/faults.sh || rc=1; ./bench/soak.sh || rc=1; exit $$rc

clean:
	rm -rf bin
