# Helpers the launch scripts source (not run by itself).

# require_args N USAGE "$@": with fewer than N arguments, prints "usage: <script> USAGE" and exits 2.
require_args() {
  local needed=$1 usage=$2
  shift 2
  if [[ $# -lt $needed ]]; then
    echo "usage: $0 $usage" >&2
    exit 2
  fi
}
