#!/usr/bin/env bash
# Usage: bash tools/slurm_cluster.sh
# Installs Debian's slurm-wlm and munge and starts a single-node Slurm cluster on this machine
# (root needed): a munge key, /etc/slurm/slurm.conf with this host, its CPUs and memory,
# munged, slurmctld and slurmd; then waits until `srun hostname` answers. Idempotent: when the
# cluster already answers it returns at once. The tests of `faeval sweep --executor slurm`
# use it (.ci/run starts it before the tests). No accounting daemon: `sacct` is off.
# Logs: /var/log/slurm/{slurmctld,slurmd}.log.
set -euo pipefail

answers() { timeout 20 srun --quiet --time=1 hostname >/dev/null 2>&1; }

if [ "$(id -u)" != 0 ]; then
  echo "[slurm] starting the cluster needs root (apt-get, daemons)" >&2
  exit 1
fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi

# munge: one key, its daemon running as the munge user.
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --keyfile /etc/munge/munge.key 2>/dev/null ||
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge /var/lib/munge /var/log/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged --force
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi

# slurm.conf from what slurmd sees of this machine (CPUs, sockets, cores, memory).
host=$(hostname -s)
node=$(slurmd -C | head -1 | sed "s/^NodeName=[^ ]*/NodeName=$host/")
install -d /etc/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm /run/slurm
conf=$(cat <<EOF
# Written by faeval's tools/slurm_cluster.sh: a single-node cluster for tests.
ClusterName=faeval
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
MinJobAge=30
$node State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
)
if [ -f /etc/slurm/slurm.conf ] && [ "$conf" = "$(cat /etc/slurm/slurm.conf)" ] &&
  scontrol ping 2>/dev/null | grep -q UP && answers; then
  echo "[slurm] cluster already up: $(sinfo -h -o '%N %c CPUs %m MB %T')"
  exit 0
fi
if [ ! -f /etc/slurm/slurm.conf ] || [ "$conf" != "$(cat /etc/slurm/slurm.conf)" ]; then
  printf '%s\n' "$conf" >/etc/slurm/slurm.conf
  for pid in /run/slurm/slurmctld.pid /run/slurm/slurmd.pid; do  # ours, of an older config
    [ -s "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true
  done
  sleep 1
fi

running() { [ -s "/run/slurm/$1.pid" ] && kill -0 "$(cat "/run/slurm/$1.pid")" 2>/dev/null; }
running slurmctld || slurmctld
running slurmd || slurmd
for _ in $(seq 120); do
  if scontrol ping 2>/dev/null | grep -q UP && sinfo -h -o %T 2>/dev/null | grep -Eq 'idle|mixed|alloc'; then
    break
  fi
  sleep 0.5
done
# A node left DOWN by an earlier unclean stop comes back here.
scontrol update nodename="$host" state=resume 2>/dev/null || true
if ! answers; then
  echo "[slurm] the cluster did not answer \`srun hostname\`; see /var/log/slurm/*.log" >&2
  tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
  exit 1
fi
echo "[slurm] cluster up: $(sinfo -h -o '%N %c CPUs %m MB %T')"
