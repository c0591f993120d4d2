#!/usr/bin/env bash
# Builds target/debian/portcullis_*.deb: the release binary, the default
# config as conffiles, the systemd unit, the man page and shell completions.
# Needs cargo-deb (`cargo install cargo-deb --locked`).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
target/release/portcullis generate-assets target/assets
cargo deb --no-build --locked
ls target/debian/*.deb
