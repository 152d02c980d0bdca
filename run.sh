#!/usr/bin/env bash
# Builds cairn (release, locked) and runs it with the given arguments.
#   ./run.sh machine create web --dir /srv/web
# The store is embedded: it lives under $CAIRN_HOME, or ~/.local/share/cairn by default.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cargo build --quiet --release --locked --manifest-path "$here/Cargo.toml" >&2
# .cargo/config.toml builds for the host triple explicitly, so binaries land under it.
exec "$here/target/$(rustc -vV | sed -n 's/^host: //p')/release/cairn" "$@"
