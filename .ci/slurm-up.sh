#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for tests/test_slurm.py: installs Debian's slurm-wlm
# and munge (apt-get, as root), writes /etc/slurm/slurm.conf for this host's real CPUs and memory,
# starts munged, slurmctld and slurmd, and waits until `sinfo` shows the node idle.
#
# Idempotent: a second call installs nothing and restarts nothing while the cluster answers.
# Exit status 0: the cluster is up. Anything else: it could not be started (the reason is on stderr);
# the test then skips with that reason.
set -euo pipefail

log() { echo "slurm-up: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
    log "not root: cannot install or start Slurm"; exit 2
fi
if sinfo -h -o '%T' 2>/dev/null | grep -qx idle; then
    log "cluster already up"; exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || { log "no apt-get: cannot install slurm-wlm and munge"; exit 2; }
    log "installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    # A recent package list is enough; refresh it only if the packages are not known yet.
    apt-cache show slurm-wlm >/dev/null 2>&1 || apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

# munge: a key, its directories, then the daemon (as the munge user, as the package intends).
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key; chmod 0755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- munged
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n | unmunge >/dev/null || { log "munged did not start"; exit 3; }
fi

# slurm.conf: this host, its real CPU count and memory (as `slurmd -C` reports them), no cgroups.
host=$(hostname -s)
node=$(slurmd -C | head -n 1)  # "NodeName=<host> CPUs=... RealMemory=..."
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat >/etc/slurm/slurm.conf <<EOF
# Written by .ci/slurm-up.sh: a one-node test cluster.
ClusterName=ci
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job waits cred_expire seconds before it starts again (120 by default): short, for tests.
AuthInfo=cred_expire=10
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
KillWait=10
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
${node} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 60); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qx idle; then
        log "cluster up: $(sinfo -h -o '%N %c CPUs %m MB %T')"; exit 0
    fi
    sleep 0.5
done
log "the node did not become idle; sinfo says: $(sinfo 2>&1 | tr '\n' ' ')"
log "slurmctld.log: $(tail -n 5 /var/log/slurm/slurmctld.log 2>/dev/null | tr '\n' ' ')"
log "slurmd.log: $(tail -n 5 /var/log/slurm/slurmd.log 2>/dev/null | tr '\n' ' ')"
exit 3
