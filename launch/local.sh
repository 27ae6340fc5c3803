#!/usr/bin/env bash
# Runs NPROC processes of `jaxbig train` on this machine as one multi-process JAX runtime
# (coordinator on 127.0.0.1). Used by the tests; the same code path as a pod or a cluster.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: launch/local.sh [--dry-run] -n NPROC [--devices-per-process D] [--port P] -- TRAIN_ARGS...

Starts NPROC processes of `python -m jaxbig train TRAIN_ARGS...`, each with
JAXBIG_COORDINATOR=127.0.0.1:P, JAXBIG_NUM_PROCESSES=NPROC, JAXBIG_PROCESS_ID=i (and, with
-d, --config.parallel.local_device_count=D: D CPU devices per process). Output lines are
prefixed with [i]. SIGTERM/SIGINT are forwarded to every process as SIGTERM (save a
checkpoint, exit 0); if one process fails, the others are stopped. Exits non-zero if any
process failed.

  -n, --nproc N                 processes (required)
  -d, --devices-per-process D   CPU devices per process (default: the platform's)
  -p, --port P                  coordinator port (default: a free one)
  --dry-run                     print the command of every process and exit
  PYTHON=...                    interpreter (default: python)
  KILL_AFTER=S                  seconds between SIGTERM and SIGKILL of stragglers (60)

example:
  launch/local.sh -n 2 -d 4 -- --config experiments/lm.py --workdir runs/lm2
EOF
}

die() {
    echo "local.sh: $*" >&2
    echo "run 'launch/local.sh --help' for usage" >&2
    exit 2
}

dry_run=0 nproc='' devices='' port=''
while (($#)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --dry-run) dry_run=1 ;;
        -n | --nproc) nproc="${2:-}"; shift ;;
        -d | --devices-per-process) devices="${2:-}"; shift ;;
        -p | --port) port="${2:-}"; shift ;;
        --) shift; break ;;
        *) die "unknown option '$1' (train arguments go after --)" ;;
    esac
    shift
done
[[ "$nproc" =~ ^[1-9][0-9]*$ ]] || die "-n NPROC must be a positive integer"
[[ -z "$devices" || "$devices" =~ ^[1-9][0-9]*$ ]] || die "-d D must be a positive integer"
(($#)) || die "missing train arguments after --"
[[ "$1" == train ]] && shift # accept both `-- train ARGS` and `-- ARGS`

python="${PYTHON:-python}"
if [[ -z "$port" ]]; then
    port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
[[ "$port" =~ ^[0-9]+$ ]] || die "--port must be a number"

cmd=("$python" -m jaxbig train "$@")
[[ -n "$devices" ]] && cmd+=("--config.parallel.local_device_count=$devices")

env_for() { # the environment of process $1
    echo "JAXBIG_COORDINATOR=127.0.0.1:$port" "JAXBIG_NUM_PROCESSES=$nproc" "JAXBIG_PROCESS_ID=$1"
}

if ((dry_run)); then
    for ((i = 0; i < nproc; i++)); do
        echo "$(env_for "$i")$(printf ' %q' "${cmd[@]}")"
    done
    exit 0
fi

pids=() killer=''
stop() { # forward a stop request once to every process still running
    trap '' TERM INT
    echo "local.sh: stopping ${#pids[@]} process(es)" >&2
    kill -TERM "${pids[@]}" 2>/dev/null || true
}
trap stop TERM INT
trap '[[ -z "$killer" ]] || kill "$killer" 2>/dev/null || true' EXIT

for ((i = 0; i < nproc; i++)); do
    # The prefixer ignores INT/TERM so a process never loses its output while it saves.
    # shellcheck disable=SC2046
    env $(env_for "$i") "${cmd[@]}" \
        > >(trap '' INT TERM; exec sed -u "s/^/[$i] /") 2>&1 &
    pids+=("$!")
done

# Wait for all; a failure stops the rest (a dead peer would leave them blocked).
status=0 running=("${pids[@]}")
while ((${#running[@]})); do
    rc=0 done_pid=''
    wait -n -p done_pid "${running[@]}" || rc=$?
    [[ -n "${done_pid:-}" ]] || continue # interrupted by a forwarded signal: wait again
    still=()
    for pid in "${running[@]}"; do [[ "$pid" == "$done_pid" ]] || still+=("$pid"); done
    running=("${still[@]}")
    ((rc == 0)) && continue
    for i in "${!pids[@]}"; do [[ "${pids[$i]}" == "$done_pid" ]] && break; done
    echo "local.sh: process $i exited with status $rc" >&2
    ((status == 0)) || continue # report the first failure, not the stopped peers
    status=$rc
    if ((${#running[@]})); then
        kill -TERM "${running[@]}" 2>/dev/null || true
        (
            trap 'kill "$sleeper"; exit 0' TERM
            sleep "${KILL_AFTER:-60}" & sleeper=$!
            wait "$sleeper" && kill -KILL "${running[@]}"
        ) >/dev/null 2>&1 &
        killer=$!
    fi
done
exit "$status"
