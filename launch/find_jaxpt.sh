# Sourced by the launch scripts (not run): sets `jaxpt` to the command to call: $JAXPT, else
# `jaxpt` on the PATH, else this checkout's .venv; with dry_run=1 the name alone will do.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -n "${JAXPT:-}" ]]; then jaxpt=$JAXPT
elif command -v jaxpt >/dev/null 2>&1; then jaxpt=jaxpt
elif [[ -x "$here/.venv/bin/jaxpt" ]]; then jaxpt="$here/.venv/bin/jaxpt"
elif ((${dry_run:-0})); then jaxpt=jaxpt
else
  echo "$0: no jaxpt command: run \`make install\` and \`source .venv/bin/activate\`, or set JAXPT" >&2
  exit 2
fi
