#!/bin/bash
# Stop the daemons that start.sh started (and only those: each has a pid file in $CLUSTER_DIR/run/).
#
#   sudo slurm/test-cluster/stop.sh [--purge]
#
#   --purge   also delete $CLUSTER_DIR (state, spool, logs, generated configs)
#
# Jobs still queued or running on this test cluster are cancelled first, so that no job
# process outlives the cluster. A multi-node cluster's network namespaces, veths, bridge and
# /etc/hosts entries are removed too. Safe to run again (idempotent). /etc/slurm/slurm.conf, the packages and the accounting
# database are left in place. Environment: CLUSTER_DIR (default /tmp/unrealnas-slurm).
set -uo pipefail

CLUSTER_DIR=${CLUSTER_DIR:-/tmp/unrealnas-slurm}
RUN="$CLUSTER_DIR/run"
export PATH="$PATH:/usr/sbin:/sbin"
export SLURM_CONF="$CLUSTER_DIR/etc/slurm.conf"

PURGE=0
for arg in "$@"; do
    case "$arg" in
        --purge) PURGE=1 ;;
        -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "stop.sh: error: unknown option $arg (use --purge or --help)" >&2; exit 1 ;;
    esac
done

say() { echo "stop.sh: $*"; }

# alive(): a zombie counts as stopped (`kill -0` succeeds on zombies)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

stop() {  # stop NAME [COMMAND]: SIGTERM, up to 10 s, then SIGKILL (NAME.pid; COMMAND defaults to NAME)
    local pidfile="$RUN/$1.pid" comm=${2:-$1} pid
    if ! alive "$pidfile" "$comm"; then
        rm -f "$pidfile"
        return 0
    fi
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 50); do alive "$pidfile" "$comm" || break; sleep 0.2; done
    if alive "$pidfile" "$comm"; then
        # e.g. slurmd waiting out a cancelled step's KillWait; slurmstepd finishes the job alone.
        say "$1 ($pid) ignored SIGTERM for 10 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null
    fi
    rm -f "$pidfile"
    say "stopped $1 ($pid)"
}

if [ ! -d "$RUN" ]; then
    say "nothing to stop: $RUN does not exist"
else
    if alive "$RUN/slurmctld.pid" slurmctld; then
        jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
        if [ -n "${jobs// /}" ]; then
            say "cancelling jobs still on the test cluster: $jobs"
            # shellcheck disable=SC2086  # one id per word
            scancel $jobs 2>/dev/null
            for _ in $(seq 50); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.2; done
        fi
    fi
    # Reverse start order: munged last, since every slurm daemon talks through it.
    for f in "$RUN"/slurmd-*.pid; do  # the per-node slurmd of a multi-node cluster
        [ -e "$f" ] || continue
        f=${f##*/}
        stop "${f%.pid}" slurmd
    done
    for name in slurmd slurmctld slurmdbd mariadbd munged; do
        stop "$name"
    done
fi
# Namespaces, veths, the bridge and the /etc/hosts block of a multi-node cluster (none: no-op).
net_down

if [ "$PURGE" = 1 ] && [ -d "$CLUSTER_DIR" ]; then
    rm -rf "${CLUSTER_DIR:?}"
    say "removed $CLUSTER_DIR"
fi
