#!/usr/bin/env bash
# Two revisions of the server side by side on the same checkpoint, index and load:
#   scripts/bench_revisions.sh OLD_REV [NEW_REV=working tree] [SECONDS=5]
# Starts `sugar serve` from a git worktree of OLD_REV and from NEW_REV (default: this
# checkout) on loopback, each on its own copy of the built-in collection's index, then
# runs `sugar bench server --url` against them alternately (two rounds), /retrieve and
# /generate at concurrency 1 and 8, so both tables come from one run on the same machine.
set -euo pipefail
cd "$(dirname "$0")/.."
old=${1:?old revision}; new=${2:-}; secs=${3:-5}
py=$(pwd)/.venv/bin/python
ckpt=$(pwd)/model/default_checkpoint
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; git worktree remove --force "$tmp/old" 2>/dev/null || true; [ -n "$new" ] && git worktree remove --force "$tmp/new" 2>/dev/null || true; rm -rf "$tmp"' EXIT
git worktree add -q --detach "$tmp/old" "$old"
newdir=$(pwd)
if [ -n "$new" ]; then git worktree add -q --detach "$tmp/new" "$new"; newdir="$tmp/new"; fi
# the built-in collection, indexed once, copied for each server
SUGAR_HOME="$tmp/home" "$py" -c "from sugar_cli.main import ensure_default; from pathlib import Path; import shutil, sys
c, i = ensure_default(Path(sys.argv[1])); shutil.copytree(i, sys.argv[2]); shutil.copytree(i, sys.argv[3])" \
  "$tmp/home" "$tmp/ix-old" "$tmp/ix-new" >/dev/null 2>&1
port() { "$py" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"; }
pa=$(port); pb=$(port)
(cd "$tmp/old" && PYTHONPATH="$tmp/old" "$py" -m sugar_cli.main serve --checkpoint "$ckpt" --index "$tmp/ix-old" --port "$pa" >"$tmp/old.log" 2>&1) &
(cd "$newdir" && PYTHONPATH="$newdir" "$py" -m sugar_cli.main serve --checkpoint "$ckpt" --index "$tmp/ix-new" --port "$pb" >"$tmp/new.log" 2>&1) &
for p in "$pa" "$pb"; do
  for _ in $(seq 600); do curl -sf "http://127.0.0.1:$p/ready" >/dev/null && break; sleep 0.5; done
  curl -sf "http://127.0.0.1:$p/ready" >/dev/null || { tail -20 "$tmp/old.log" "$tmp/new.log"; exit 1; }
done
for p in "$pa" "$pb"; do  # warm-up: first requests load lazily built state on both servers
  for ep in retrieve generate; do
    curl -sf "http://127.0.0.1:$p/$ep" -H 'content-type: application/json' \
      -d '{"query": {"slices": [{"type": "text", "text": "warm up"}]}, "max_tokens": 2}' >/dev/null || true
  done
done
for round in 1 2; do
  for side in "old $old $pa" "new ${new:-working-tree} $pb"; do
    set -- $side
    echo "=== round $round: $1 ($2)"
    "$py" -m sugar_cli.main bench server --url "http://127.0.0.1:$3" --checkpoint "$ckpt" --index "$tmp/ix-new" \
      --endpoints retrieve generate --concurrency 1 8 --seconds "$secs" --no-compare 2>/dev/null | grep -v "^$"
  done
done
