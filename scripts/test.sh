#!/usr/bin/env bash
# Set up a fresh machine and run every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# License policy (deny.toml): rustables (GPL-3) and other copyleft crates stay out.
if command -v cargo-deny >/dev/null || {
    echo "test.sh: installing cargo-deny (a few minutes, once)"
    cargo install cargo-deny --locked
}; then
    cargo deny --log-level error check licenses
fi
cargo test --workspace --no-fail-fast 2>&1
# The client also builds for FreeBSD: type-checked here (no cross linker), with
# the host's pkg-config answering for the C libraries. posternd does not build
# there yet: see README, "Actions (firewall backends)".
rustup target add x86_64-unknown-freebsd
PKG_CONFIG_ALLOW_CROSS=1 cargo check --quiet -p spa-client --target x86_64-unknown-freebsd
bash scripts/fuzz.sh 15  # every fuzz target for 15 s (fuzz/, README "Fuzzing")
