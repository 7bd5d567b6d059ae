#!/usr/bin/env bash
# Builds the Debian packages of postern (client) and posternd (server):
#   scripts/build-deb.sh                      release build, then both .deb files
#   scripts/build-deb.sh --profile dev --no-build --fast
#                                             package the debug binaries already
#                                             built, light compression (what
#                                             tests/tests/debian_package.rs does)
# Man pages, completions and the packaged systemd unit are written by
# postern-dist into dist/generated/ first; cargo-deb (scripts/setup.sh
# installs it) then writes target/debian/{postern,posternd}_VERSION-1_ARCH.deb.
# Prints the paths of the two packages, one a line, on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=release
build=yes
fast=()
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) profile="${2:?--profile needs a name}"; shift 2 ;;
        --no-build) build=no; shift ;;
        --fast) fast=(--fast); shift ;;
        *) echo "usage: build-deb.sh [--profile PROFILE] [--no-build] [--fast]" >&2; exit 2 ;;
    esac
done
command -v cargo-deb >/dev/null || {
    echo "build-deb.sh: cargo-deb is missing (scripts/setup.sh installs it)" >&2
    exit 1
}
dir=$profile
[ "$profile" = dev ] && dir=debug
target=$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
if [ "$build" = yes ]; then
    echo "build-deb.sh: cargo build --profile $profile (postern, posternd, postern-dist)" >&2
    cargo build --profile "$profile" --bin postern --bin posternd --bin postern-dist >&2
fi
rm -rf dist/generated
"$target/$dir/postern-dist" dist/generated >/dev/null
# --no-build: the binaries were built above (or by the caller); cargo-deb
# would otherwise build the whole workspace. With --profile dev cargo-deb warns
# that it is meant for releases: the test packages debug binaries on purpose.
for crate in spa-client spa-server; do
    cargo deb --no-build "${fast[@]}" --profile "$profile" -p "$crate"  # prints the .deb's path
done
