#!/usr/bin/env bash
# A two-node Slurm cluster on one machine, to rehearse multi-node training (root, no systemd).
#
# Each node is a network namespace with its own interface, address and hostname (node1 =
# 10.77.0.11, node2 = 10.77.0.12, bridged to the host's 10.77.0.1, where the controller runs),
# so ranks on different nodes reach each other over a network, as on a cluster, not over a
# shared loopback. It is a cluster of its own beside start-local-slurm.sh's (own config, port,
# state and logs); point Slurm's commands at it with
#   export SLURM_CONF=/etc/slurm-twonode/slurm.conf
# Usage: slurm/local/two-node-cluster.sh start [CPUS_PER_NODE] | stop
# `start` restarts it from scratch (running jobs are killed); `stop` removes every trace.
set -euo pipefail
name=twonode
conf=/etc/slurm-$name/slurm.conf
state=/var/spool/slurm-$name
net=10.77.0
bridge=fg-$name

. "$(dirname "$0")/../../scripts/netns-nodes.sh"

stop() {
  nodes_down "$bridge" fg-node
  if [ -f "$state/slurmctld.pid" ]; then
    pid=$(cat "$state/slurmctld.pid")
    kill "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  fi
  rm -rf "$state"
}

start() {
  local cpus=${1:-2}
  . "$(dirname "$0")/common.sh"
  stop
  mkdir -p "$(dirname "$conf")" "$state/ctld"
  nodes_up "$bridge" "$net" fg-node
  for i in 1 2; do
    mkdir -p "$state/node$i"
    printf '127.0.0.1 localhost\n%s.1 %s\n%s.11 node1\n%s.12 node2\n' \
      "$net" "$(hostname -s)" "$net" "$net" > "$state/node$i/hosts"
  done
  cat > "$conf" <<CONF
ClusterName=$name
SlurmctldHost=$(hostname -s)($net.1)
SlurmctldPort=6827
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/%n
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/$name-slurmctld.log
SlurmdLogFile=/var/log/slurm/$name-slurmd-%n.log
$(shared_slurm_conf)
NodeName=node1 NodeAddr=$net.11 CPUs=$cpus RealMemory=2000 State=UNKNOWN
NodeName=node2 NodeAddr=$net.12 CPUs=$cpus RealMemory=2000 State=UNKNOWN
PartitionName=main Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP
CONF
  SLURM_CONF=$conf slurmctld
  for i in 1 2; do
    # The node's own hostname and /etc/hosts (UTS and mount namespaces): srun and gloo find
    # a node's address from its hostname. nsenter, not `ip netns exec`, which hides cgroups.
    SLURM_CONF=$conf nsenter --net="/run/netns/fg-node$i" unshare --mount --uts sh -c \
      "mount --bind $state/node$i/hosts /etc/hosts && hostname node$i && exec slurmd -N node$i"
  done
  for _ in $(seq 30); do
    if [ "$(SLURM_CONF=$conf sinfo -h -N -o '%T' 2>/dev/null | grep -cE 'idle|mix|alloc')" = 2 ]; then
      SLURM_CONF=$conf sinfo -N; exit 0
    fi
    sleep 1
  done
  echo "two-node slurm did not come up; see /var/log/slurm/$name-*.log" >&2
  exit 1
}

case ${1:-} in
  start) shift; start "$@" ;;
  stop) stop ;;
  *) echo "usage: $0 start [CPUS_PER_NODE] | stop" >&2; exit 2 ;;
esac
