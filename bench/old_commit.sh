# Sourced by the A/B scripts: check out an older fewstep commit into a temporary git worktree that
# Python imports as `fewstep` through PYTHONPATH (this checkout's .venv supplies everything else).
#   old_commit ROOT COMMIT   sets TMP (removed on exit) and OLD_PATH (the PYTHONPATH to run the old commit)
old_commit() {
  TMP=$(mktemp -d)
  trap 'git -C "'"$1"'" worktree remove --force "$TMP/old" >/dev/null 2>&1; rm -rf "$TMP"' EXIT
  git -C "$1" worktree add -q --detach "$TMP/old" "$2"
  mkdir -p "$TMP/pk" && ln -s "$TMP/old" "$TMP/pk/fewstep"
  OLD_PATH="$TMP/pk"
}
