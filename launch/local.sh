#!/usr/bin/env bash
# Train on one host (all of its local devices), e.g.:
#   launch/local.sh configs/4dmot.py:tiny /tmp/4dmot [--config.key=value ...]
# Needs: mtvjax installed (`pip install -e .`). Rerunning the same command resumes from the
# last complete checkpoint in the workdir.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
require_args 2 "CONFIG[:VARIANT] WORKDIR [--config.key=value ...]" "$@"
config=$1
workdir=$2
shift 2
exec mtvjax train --config "$config" --workdir "$workdir" "$@"
