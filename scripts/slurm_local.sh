#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for trying the SLURM launcher and for
# `make test-slurm`.  No systemd: munged, slurmctld and slurmd run by hand from a folder of
# their own (config, munge key and socket, state, logs, PID files), so nothing in /etc changes.
#
#   scripts/slurm_local.sh install      # apt-get install slurm-wlm munge when missing (as root)
#   scripts/slurm_local.sh start DIR    # write DIR/slurm.conf, start the daemons, wait for the node
#   scripts/slurm_local.sh stop DIR     # cancel DIR's jobs, stop the daemons started there (by PID)
#
# After `start`, point Slurm's commands at the cluster with: export SLURM_CONF=DIR/slurm.conf
set -euo pipefail

die() { echo "slurm_local: $*" >&2; exit 1; }

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sbatch >/dev/null; then
        return 0
    fi
    [ "$(id -u)" = 0 ] || die "slurm-wlm and munge are missing; install them as root: apt-get install slurm-wlm munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

write_conf() {  # DIR
    local dir=$1 node user
    node=$(hostname -s)
    user=$(id -un)
    # the node as slurmd measures it (CPUs, sockets, cores, RealMemory): honest, or the node drains
    local hw
    hw=$(slurmd -C | head -n1 | sed 's/^NodeName=[^ ]* //')
    cat >"$dir/slurm.conf" <<EOF
ClusterName=qexp-local
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job may start again only after its old credential expired (default 120 s)
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=5
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
PlugStackConfig=$dir/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/builtin
# the main scheduling pass (default every 60 s) starts requeued jobs once their BeginTime passed
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
SlurmctldTimeout=10
SlurmdTimeout=10
MessageTimeout=5
InactiveLimit=0
KillWait=5
MinJobAge=30
NodeName=$node NodeAddr=127.0.0.1 $hw State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
    : >"$dir/plugstack.conf"
}

started() {  # DIR NAME: the PID in DIR/NAME.pid is alive
    local pid
    pid=$(cat "$1/$2.pid" 2>/dev/null) && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

launch() {  # DIR NAME COMMAND...: a foreground daemon in the background, its PID in DIR/NAME.pid
    local dir=$1 name=$2
    shift 2
    "$@" >>"$dir/$name.out" 2>&1 &
    echo $! >"$dir/$name.pid"
}

wait_for() {  # SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2
    shift 2
    for _ in $(seq $((limit * 5))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    return 1
}

node_idle() {
    [ "$(sinfo -h -N -o %t 2>/dev/null)" = idle ]
}

start() {  # DIR
    local dir=$1
    for tool in munged slurmctld slurmd sinfo; do
        command -v $tool >/dev/null || die "$tool not found (run: scripts/slurm_local.sh install)"
    done
    mkdir -p "$dir"/{munge,state,spool}
    dir=$(cd "$dir" && pwd)
    chmod 700 "$dir/munge"
    [ -s "$dir/munge/munge.key" ] || dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    chmod 600 "$dir/munge/munge.key"
    write_conf "$dir"
    export SLURM_CONF=$dir/slurm.conf
    launch "$dir" munged munged --foreground --force --socket="$dir/munge/munge.socket" \
        --key-file="$dir/munge/munge.key" --pid-file="$dir/munge/munged.pid" \
        --seed-file="$dir/munge/munged.seed" --log-file="$dir/munge/munged.log"
    wait_for 10 munged test -S "$dir/munge/munge.socket" || { stop "$dir"; die "munged did not start: $dir/munged.out"; }
    launch "$dir" slurmctld slurmctld -D -i -f "$SLURM_CONF"
    launch "$dir" slurmd slurmd -D -f "$SLURM_CONF"
    if ! wait_for 30 "node idle" node_idle; then
        sinfo -N -l >&2 || true
        tail -n 5 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
        stop "$dir"
        die "the node did not become idle within 30 s (logs in $dir)"
    fi
    echo "slurm_local: single-node cluster up; export SLURM_CONF=$SLURM_CONF"
}

stop() {  # DIR
    local dir=$1 name pid
    [ -f "$dir/slurm.conf" ] || return 0
    export SLURM_CONF=$dir/slurm.conf
    if started "$dir" slurmctld; then
        scancel --full --quiet --user="$(id -un)" 2>/dev/null || true  # drain the queue
    fi
    for name in slurmd slurmctld munged; do
        started "$dir" $name || continue
        pid=$(cat "$dir/$name.pid")
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        rm -f "$dir/$name.pid"
    done
}

case "${1:-}" in
    install) install ;;
    start) [ $# = 2 ] || die "usage: $0 start DIR"; start "$2" ;;
    stop) [ $# = 2 ] || die "usage: $0 stop DIR"; stop "$2" ;;
    *) die "usage: $0 install | start DIR | stop DIR" ;;
esac
