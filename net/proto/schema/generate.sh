#!/usr/bin/env bash
# Regenerates net/proto/src/dynacore_generated.rs from net/proto/schema/dynacore.fbs with flatc,
# which must be the version of the `flatbuffers` crate (Cargo.toml). With `--check`, generates
# into a temporary directory and fails if the committed file differs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
want=$(sed -n 's/^flatbuffers = "=\([0-9.]*\)"$/\1/p' Cargo.toml)
have=$(flatc --version | awk '{print $3}')
if [ "$want" != "$have" ]; then
    echo "generate.sh: flatc $have, but the flatbuffers crate is $want" >&2
    exit 1
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
flatc --rust -o "$out" net/proto/schema/dynacore.fbs
target=net/proto/src/dynacore_generated.rs
if [ "${1:-}" = "--check" ]; then
    if ! diff -u "$target" "$out/dynacore_generated.rs"; then
        echo "generate.sh: $target is stale; run net/proto/schema/generate.sh" >&2
        exit 1
    fi
    echo "generate.sh: $target matches the schema"
else
    mkdir -p "$(dirname "$target")"
    cp "$out/dynacore_generated.rs" "$target"
    echo "generate.sh: wrote $target"
fi
