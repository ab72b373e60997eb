# Shared by the launch scripts (sourced, not run).
#
# DRY_RUN=1: print each command (shell-quoted, one per line, prefixed "+ ") instead of running it,
#   so a launch can be checked on a laptop before it touches a slice or a node.
# COMPILE_CACHE=DIR: JAX's persistent compilation cache (JAX_COMPILATION_CACHE_DIR) — a restarted
#   or resumed job reuses the compiled programs instead of compiling again (minutes at 8B). On a
#   pod or cluster give a path every host can read and write (e.g. gs://BUCKET/xla_cache on TPU).

run() {
  if [ -n "${DRY_RUN:-}" ]; then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

if [ -n "${COMPILE_CACHE:-}" ]; then
  export JAX_COMPILATION_CACHE_DIR="$COMPILE_CACHE"
fi
