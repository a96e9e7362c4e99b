# wasmcluster: the two commands of the README, and the steps they are made of.
#
#   make run    build the host and the example plugins, serve them on 127.0.0.1:$(PORT)
#   make test   every check: fmt, clippy, unit, end-to-end (Rust and JS) tests,
#               a short fuzz run of every parser

PORT ?= 8000
WORKERS ?=
CARGO ?= cargo
WASM_TARGET := wasm32-wasip2
export CARGO_TARGET_DIR ?= $(CURDIR)/target
EXAMPLES := echo chat presence auth fetch
FIXTURES := flaky init-trap bad-import not-a-plugin echo-v2 chat-v2 plain-world tokens control guard guard-low store
BIN := $(CARGO_TARGET_DIR)/release/wasmcluster

.PHONY: run test setup test-deps plugins fixtures build dist lint test-rust test-compat test-js js-deps fuzz-smoke clean

## Install what is missing: the wasm32-wasip2 Rust target.
setup:
	@rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)

## Install what the tests need from the system when it is missing: Node.js,
## Chromium, openssl, redis-server (scripts/install-test-deps).
test-deps:
	@scripts/install-test-deps

## Build the example plugins into plugins/ (the `plugin` profile of
## Cargo.toml, then `wasmcluster strip`: small, and fault reports still name
## functions and lines).
plugins: setup build
	$(CARGO) build --profile plugin --target $(WASM_TARGET) $(addprefix -p ,$(EXAMPLES))
	@mkdir -p plugins
	@for p in $(EXAMPLES); do $(BIN) strip $(CARGO_TARGET_DIR)/$(WASM_TARGET)/plugin/$$p.wasm -o plugins/$$p.wasm || exit 1; done

## Build the test-only plugins (misbehaving on purpose) into tests/fixtures/wasm/,
## the way the examples are built.
fixtures: setup build
	$(CARGO) build --profile plugin --target $(WASM_TARGET) $(addprefix -p fixture-,$(FIXTURES))
	@mkdir -p tests/fixtures/wasm
	@for p in $(FIXTURES); do $(BIN) strip $(CARGO_TARGET_DIR)/$(WASM_TARGET)/plugin/fixture_$$(echo $$p | tr - _).wasm -o tests/fixtures/wasm/$$p.wasm >/dev/null || exit 1; done

## Build the server and the load generator (`make plugins` strips the
## plugins with the server; the two are built together because building one
## alone would unify dependency features differently and rebuild both).
build:
	$(CARGO) build --release -p wasmcluster -p wasmcluster-bench

## What ships, in $(DIST): the server without debug info but with its function
## names, its line tables beside it in wasmcluster.debug (scripts/ship-binary),
## and the example plugins as `make plugins` builds them.
DIST ?= dist
dist: plugins
	@scripts/ship-binary $(abspath $(BIN)) $(DIST)
	@mkdir -p $(DIST)/plugins
	@cp $(addprefix plugins/,$(addsuffix .wasm,$(EXAMPLES))) $(DIST)/plugins/
	@ls -l $(DIST)/wasmcluster $(DIST)/wasmcluster.debug $(DIST)/plugins

## Serve the example plugins on 127.0.0.1:$(PORT).
run: plugins build
	$(BIN) serve --config examples/wasmcluster.toml --host 127.0.0.1 --port $(PORT) --plugins plugins $(if $(WORKERS),-w $(WORKERS)) --cache-dir $(CARGO_TARGET_DIR)/wasm-cache

## Formatting and lints, for the host and for the plugins.
lint: setup
	$(CARGO) fmt --all --check
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml --check
	$(CARGO) clippy --release --all-targets -- -D warnings
	$(CARGO) clippy --release --target $(WASM_TARGET) $(addprefix -p ,$(EXAMPLES)) $(addprefix -p fixture-,$(FIXTURES)) -- -D warnings

test-rust: test-deps plugins fixtures build
	$(CARGO) test --release

## The suites that use example plugins, against the plugins built against
## WIT 0.1.0 and kept in tests/fixtures/v0.1.0: a built plugin keeps working.
COMPAT_SUITES := protocol plugins timers faults auth middleware hot_swap
test-compat: test-deps plugins fixtures build
	WASMCLUSTER_TEST_PLUGINS=v0.1.0 $(CARGO) test --release $(addprefix --test ,$(COMPAT_SUITES))

js-deps:
	cd tests/js && npm ci --no-audit --no-fund

test-js: test-deps plugins build js-deps
	cd tests/js && WASMCLUSTER_BIN=$(BIN) npm test

## Replay every fuzz target's seed corpus (past crashes included) and fuzz
## each for FUZZ_SECONDS; it builds apart from the main build (fuzz/README.md).
FUZZ_SECONDS ?= 10
fuzz-smoke: test-deps
	FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz-smoke

## Every test.
test: lint test-rust test-compat test-js fuzz-smoke

clean:
	rm -rf plugins tests/fixtures/wasm tests/js/node_modules
	$(CARGO) clean
