#!/usr/bin/env bash
# Train on every worker of a Cloud TPU VM (single host or pod slice), workdir on a GCS bucket.
#   launch/tpu_vm.sh create  NAME ZONE ACCELERATOR [VERSION]   # e.g. v5p-32 v2-alpha-tpuv5
#   launch/tpu_vm.sh setup   NAME ZONE                         # install mtvjax on all workers
#   launch/tpu_vm.sh train   NAME ZONE CONFIG[:VARIANT] gs://BUCKET/run [--config.key=value ...]
#   launch/tpu_vm.sh delete  NAME ZONE
# Needs: gcloud authenticated for the project; the repository pushed somewhere the workers can
# clone (REPO_URL, default: this checkout's origin); a GCS bucket writable by the TPU service
# account. On TPU VMs jax.distributed finds the coordinator by itself (no env vars needed); the
# same train command runs on every worker. Rerunning `train` resumes from gs://.../checkpoints.
set -euo pipefail
action=${1:-}
name=${2:-}
zone=${3:-}
if [[ -z "$action" || -z "$name" || -z "$zone" ]]; then
  sed -n '2,12p' "$0" >&2
  exit 2
fi
shift 3
on_all_workers() {
  gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "$1"
}
case "$action" in
  create)
    accelerator=${1:?accelerator type, e.g. v5p-32}
    version=${2:-tpu-ubuntu2204-base}
    gcloud compute tpus tpu-vm create "$name" --zone "$zone" \
      --accelerator-type "$accelerator" --version "$version"
    ;;
  setup)
    repo_url=${REPO_URL:-$(git config --get remote.origin.url)}
    on_all_workers "git clone $repo_url mtvjax || git -C mtvjax pull; \
      pip install -U 'jax[tpu]' && pip install -e ./mtvjax"
    ;;
  train)
    config=${1:?config}
    workdir=${2:?gs:// workdir}
    shift 2
    extra=$(printf ' %q' "$@")
    on_all_workers "cd mtvjax && mtvjax train --config $config --workdir $workdir$extra"
    ;;
  delete)
    gcloud compute tpus tpu-vm delete "$name" --zone "$zone" --quiet
    ;;
  *)
    echo "unknown action: $action (create, setup, train, delete)" >&2
    exit 2
    ;;
esac
