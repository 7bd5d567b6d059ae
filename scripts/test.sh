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
# The client, posternd and the backends it uses there (pf, ipfw, script) also
# build for FreeBSD: type-checked here only (no cross linker, nothing of it is
# run), with the host's pkg-config answering for the C libraries. See README,
# "Actions (firewall backends)".
rustup target add x86_64-unknown-freebsd
PKG_CONFIG_ALLOW_CROSS=1 cargo check --quiet -p spa-client -p spa-server \
    -p postern-backend-pf -p postern-backend-ipfw -p postern-backend-script \
    --target x86_64-unknown-freebsd
bash scripts/fuzz.sh 15  # every fuzz target for 15 s (fuzz/, README "Fuzzing")
