#!/usr/bin/env bash
# Cloud TPU VM pod slice with gcloud: create, copy the repo to every worker, install, run
# `jaxbig train` on all workers at once (JAX auto-detects the pod), stream logs, delete.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: launch/tpu_pod.sh [--dry-run] COMMAND --name NAME --zone ZONE [options] [-- TRAIN_ARGS...]

commands:
  create    gcloud compute tpus tpu-vm create NAME (--accelerator-type, --version)
  copy      the repo (git-tracked and untracked, non-ignored files) -> ~/jaxbig on every worker
  install   pip install -e . and jax[tpu] (the same jax version) on every worker
  run       jaxbig train TRAIN_ARGS --config.parallel.distributed=true on --worker=all,
            output streamed here, each line prefixed with the worker's hostname
  delete    delete the TPU VM
  all       create, copy, install, run (and delete afterwards with --delete)

options:
  --name NAME               TPU VM name (or $TPU_NAME)
  --zone ZONE               e.g. us-central2-b (or $TPU_ZONE)
  --project PROJECT         gcloud project (default: gcloud's configured one)
  --accelerator-type TYPE   pod slice (default v4-32, or $TPU_TYPE)
  --version VERSION         TPU VM software version (default tpu-ubuntu2204-base)
  --spot                    create a spot (preemptible) slice; rerun `run` to resume
  --delete                  with `all`: delete the slice when the run ends (also on failure)
  --dry-run                 print every gcloud command instead of running it

--workdir must be storage every worker sees at the same path (e.g. a GCS bucket mounted
with gcsfuse, or Filestore/NFS): all workers write checkpoint shards; worker 0 writes logs.

example:
  launch/tpu_pod.sh all --name lm-pod --zone us-central2-b --accelerator-type v4-32 \
      -- --config experiments/lm.py:size=gpt2_small --workdir /mnt/runs/lm
EOF
}

die() {
    echo "tpu_pod.sh: $*" >&2
    echo "run 'launch/tpu_pod.sh --help' for usage" >&2
    exit 2
}

REMOTE_DIR=jaxbig # under each worker's home
dry_run=0 delete_after=0 spot=0 command=''
name="${TPU_NAME:-}" zone="${TPU_ZONE:-}" project=''
accelerator="${TPU_TYPE:-v4-32}" version="${TPU_VERSION:-tpu-ubuntu2204-base}"
while (($#)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --dry-run) dry_run=1 ;;
        --delete) delete_after=1 ;;
        --spot) spot=1 ;;
        --name) name="${2:-}"; shift ;;
        --zone) zone="${2:-}"; shift ;;
        --project) project="${2:-}"; shift ;;
        --accelerator-type) accelerator="${2:-}"; shift ;;
        --version) version="${2:-}"; shift ;;
        create | copy | install | run | delete | all)
            [[ -z "$command" ]] || die "one command at a time ('$command', '$1')"
            command="$1" ;;
        --) shift; break ;;
        *) die "unknown argument '$1' (train arguments go after --)" ;;
    esac
    shift
done
train_args=("$@")
[[ -n "$command" ]] || die "missing COMMAND (create|copy|install|run|delete|all)"
[[ -n "$name" ]] || die "missing --name"
[[ -n "$zone" ]] || die "missing --zone"
if [[ "$command" == run || "$command" == all ]]; then
    ((${#train_args[@]})) || die "'$command' needs train arguments after --"
    [[ "${train_args[0]}" == train ]] && train_args=("${train_args[@]:1}")
fi

where=(--zone="$zone")
[[ -n "$project" ]] && where+=(--project="$project")

quote() { # shell-quotes each argument, leaving plain words bare (readable dry-runs)
    local a out=()
    for a in "$@"; do
        if [[ "$a" =~ ^[A-Za-z0-9_./:=,@%+~-]+$ ]]; then out+=("$a"); else out+=("${a@Q}"); fi
    done
    echo "${out[*]}"
}

gcloud_() { # runs (or, with --dry-run, prints) one gcloud command
    if ((dry_run)); then
        quote gcloud "$@"
    else
        gcloud "$@"
    fi
}

tpu_ssh() { # tpu_ssh COMMAND: runs COMMAND on every worker
    gcloud_ compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all --command="$1"
}

do_create() {
    local extra=()
    ((spot)) && extra+=(--spot)
    gcloud_ compute tpus tpu-vm create "$name" "${where[@]}" \
        --accelerator-type="$accelerator" --version="$version" "${extra[@]}"
}

do_copy() {
    local repo stage
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    stage="$(mktemp -d)"
    # shellcheck disable=SC2064
    trap "rm -rf '$stage'" RETURN
    mkdir "$stage/$REMOTE_DIR"
    ((dry_run)) && echo "# staged: git ls-files --cached --others --exclude-standard of $repo"
    # files deleted in the work tree but still in the index are skipped (tar would fail)
    (cd "$repo" && git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' f; do [[ -e "$f" ]] && printf '%s\0' "$f"; done |
        tar --null -T - -cf -) | tar -xf - -C "$stage/$REMOTE_DIR"
    tpu_ssh "rm -rf ~/$REMOTE_DIR"
    gcloud_ compute tpus tpu-vm scp --recurse "$stage/$REMOTE_DIR" "$name:~/" \
        "${where[@]}" --worker=all
}

do_install() {
    # jax[tpu] pinned to the jax version that the project's own pins resolved to.
    tpu_ssh "cd ~/$REMOTE_DIR && python3 -m pip install -q -U pip && \
python3 -m pip install -q -e . && \
python3 -m pip install -q \"jax[tpu]==\$(python3 -c 'import jax; print(jax.__version__)')\""
}

do_run() {
    local args
    args=" $(quote "${train_args[@]}")"
    # Each worker runs the same command; its lines are prefixed with its hostname.
    tpu_ssh "cd ~/$REMOTE_DIR && export PATH=\$HOME/.local/bin:\$PATH && \
set -o pipefail && python3 -m jaxbig train$args --config.parallel.distributed=true 2>&1 | \
sed -u \"s/^/[\$(hostname)] /\""
}

do_delete() {
    gcloud_ compute tpus tpu-vm delete "$name" "${where[@]}" --quiet
}

case "$command" in
    all)
        do_create
        if ((delete_after)); then
            trap 'do_delete' EXIT
        fi
        do_copy
        do_install
        do_run
        ;;
    *) "do_$command" ;;
esac
