#!/usr/bin/env bash
# Builds the S3-compatible server the tests of the knowledge base's S3 file store run against
# (tests/harness/s3.py, tests/integration/test_kb_s3.py): s3s-fs, a small S3 server on a
# directory (Apache-2.0, crates.io), at the version in tests/s3/version, with cargo.
#
# The binary is cached outside the repository, keyed on that version:
#   ${LIFELONG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lifelong}/s3s-fs-VERSION/bin/s3s-fs
# A second run finds it there and builds nothing. Prints the binary's path.
# CI (.ci/run) runs this before the tests; a person may, or the S3 tests skip saying why.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
version="$(tr -d '[:space:]' <"$here/version")"
cache="${LIFELONG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lifelong}"
dest="$cache/s3s-fs-$version"
binary="$dest/bin/s3s-fs"
if [ -x "$binary" ]; then
    echo "$binary"
    exit 0
fi
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$PATH:$HOME/.cargo/bin"; fi  # rustup's place
if ! command -v cargo >/dev/null 2>&1; then
    echo "tests/s3/build.sh: cargo is not installed: cannot build s3s-fs $version" >&2
    exit 1
fi
mkdir -p "$cache"
work="$(mktemp -d "$cache/.s3s-fs-$version.XXXXXX")"
trap 'rm -rf "$work"' EXIT
# --locked: the dependency versions s3s-fs was published with, not whatever is newest today.
CARGO_TARGET_DIR="$work/target" cargo install --quiet --locked --root "$work/root" \
    s3s-fs --version "$version" --features binary >&2
rm -rf "$dest"
mv "$work/root" "$dest"  # whole or not at all: an interrupted build leaves no binary
echo "$binary"
