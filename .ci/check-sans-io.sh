#!/usr/bin/env bash
# Enforces DESIGN.md's sans-IO rule: the planes below import neither tokio nor quinn and never read the clock
# or OS randomness themselves (time comes in as an argument, randomness from a seeded RNG passed in).
# Exit 1 and name each offending line when the rule is broken.
set -euo pipefail
cd "$(dirname "$0")/.."

# node/machine: the node's decisions (the driver moves bytes for it); sim: the whole-node simulator.
planes=(counter replication membership state wire config node/machine sim policy)
# What the rule forbids, as extended regular expressions over code (comments are stripped first).
forbidden='(^|[^A-Za-z0-9_])(tokio|quinn)::|^\s*use (tokio|quinn)\b|extern crate (tokio|quinn)|Instant::now\(|SystemTime::now\(|UNIX_EPOCH\.elapsed|thread_rng\(|rand::random|OsRng|getrandom|from_entropy\(|RandomState::new\(|fastrand::'

status=0
for plane in "${planes[@]}"; do
  dir="src/$plane"
  [ -d "$dir" ] || continue
  while IFS= read -r -d '' file; do
    # Strip // comments (doc comments included) so prose may name what the code must not do.
    hits=$(sed -E 's#//.*$##' "$file" | grep -nE "$forbidden" || true)
    if [ -n "$hits" ]; then
      while IFS= read -r hit; do
        echo "sans-IO violation in $file:${hit%%:*}: ${hit#*:}"
      done <<< "$hits"
      status=1
    fi
  done < <(find "$dir" -name '*.rs' -print0)
done

if [ $status -eq 0 ]; then
  echo "sans-IO check: ${planes[*]} are free of tokio, quinn, clock and OS randomness reads"
fi
exit $status
