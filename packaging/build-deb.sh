#!/usr/bin/env bash
# Builds the .deb (printed last): the stripped release binary, the default
# config as conffiles, the systemd unit with its maintainer scripts, the man
# pages and shell completions; debug symbols go to a separate -dbgsym .ddeb.
# Needs cargo-deb (`cargo install cargo-deb --locked`). Honours
# CARGO_TARGET_DIR; the package lands in $CARGO_TARGET_DIR/debian/.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
cargo build --release --locked
# cargo-deb maps `target/release/` in Cargo.toml's assets to the real target
# directory, so the generated files go under it.
"$target/release/portcullis" generate-assets "$target/release/assets"
cargo deb --no-build --locked --dbgsym
