#!/usr/bin/env bash
# A two-node Ray cluster on one machine, to rehearse data prep across nodes (root, no systemd).
#
# Each node is a network namespace with its own interface, address and hostname (node1 =
# 10.78.0.11, the head; node2 = 10.78.0.12), bridged to the host's 10.78.0.1, so tasks, actors
# and objects move between nodes over a network, as on a cluster. Anything the nodes must reach
# (an S3 server) listens on 10.78.0.1; the head's job API is http://10.78.0.11:8265.
# Token authentication, as Ray's default: both nodes use RAY_AUTH_TOKEN from the environment
# (required); submit with RAY_AUTH_MODE=token and the same RAY_AUTH_TOKEN.
# Usage: scripts/two-node-ray.sh start [CPUS_PER_NODE] | kill-node 2 | join-node 2 [CPUS] | stop
# `start` restarts it from scratch; `kill-node` kills every process of a node with SIGKILL (a node
# lost: preempted, powered off); `join-node` starts a node that joins the head (autoscaling);
# `stop` removes every trace. `ray` is the one on PATH.
set -euo pipefail
state=/var/lib/ray-twonode
net=10.78.0
bridge=fg-raytwo

. "$(dirname "$0")/netns-nodes.sh"

stop() {
  nodes_down "$bridge" fg-ray
  rm -rf "$state"
}

# node I ARGS...: run `ray start ARGS --block` as node I, in the background, logging to $state.
node() {
  local i=$1
  shift
  setsid nsenter --net="/run/netns/fg-ray$i" unshare --mount --uts sh -c \
    "mount --bind $state/hosts /etc/hosts && hostname node$i && exec ray start --block \
     --node-ip-address $net.1$i --disable-usage-stats $*" > "$state/node$i.log" 2>&1 &
}

start() {
  local cpus=${1:-1}
  : "${RAY_AUTH_TOKEN:?set RAY_AUTH_TOKEN to the token the cluster will use}"
  # Its own temp dir: sessions, logs, and the address file that makes a plain ray.init() on this
  # machine join a cluster (/tmp/ray/ray_current_cluster) stay with this cluster. The head's
  # here; every other node has one of its own (join_node), as every machine of a cluster has its
  # own /tmp: one shared by two nodes would have each node's runtime-env agent unpack a job's
  # working_dir into the same folder, deleting the one the driver runs in.
  export RAY_AUTH_MODE=token RAY_USAGE_STATS_ENABLED=0 RAY_TMPDIR=$state/tmp
  command -v ray > /dev/null || { echo "ray is not on PATH" >&2; exit 1; }
  stop
  mkdir -p "$state/tmp"
  printf '127.0.0.1 localhost\n%s.1 %s\n%s.11 node1\n%s.12 node2\n' \
    "$net" "$(hostname -s)" "$net" "$net" > "$state/hosts"
  nodes_up "$bridge" "$net" fg-ray
  node 1 --head --port 6379 --num-cpus "$cpus" --dashboard-host 0.0.0.0 --dashboard-port 8265
  for _ in $(seq 60); do
    ip netns exec fg-ray1 ray status --address "$net.11:6379" > /dev/null 2>&1 && break
    sleep 1
  done
  join_node 2 "$cpus"
  for _ in $(seq 60); do
    if [ "$(ip netns exec fg-ray1 ray status --address "$net.11:6379" 2>/dev/null | grep -c ' node_')" = 2 ]; then
      ip netns exec fg-ray1 ray status --address "$net.11:6379"
      exit 0
    fi
    sleep 1
  done
  echo "two-node ray did not come up; see $state/node*.log and $state/tmp" >&2
  exit 1
}

# join_node I CPUS: node I joins the head; returns once it is up (its `ray start` says so).
join_node() {
  local i=$1 cpus=${2:-1}
  export RAY_AUTH_MODE=token RAY_USAGE_STATS_ENABLED=0 RAY_TMPDIR=$state/tmp
  mkdir -p "$state/node$i-tmp"
  node "$i" --address "$net.11:6379" --num-cpus "$cpus" --temp-dir "$state/node$i-tmp"
  for _ in $(seq 60); do
    grep -q "Ray runtime started" "$state/node$i.log" && return 0
    sleep 1
  done
  echo "node $i did not join; see $state/node$i.log and $state/node$i-tmp" >&2
  exit 1
}

# kill_node I: SIGKILL every process of node I, at once; its namespace (address) stays.
kill_node() {
  local pids
  pids=$(ip netns pids "fg-ray$1")
  [ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
}

case ${1:-} in
  start) shift; start "$@" ;;
  kill-node) kill_node "${2:?which node}" ;;
  join-node) : "${RAY_AUTH_TOKEN:?set RAY_AUTH_TOKEN to the token of the cluster}"; join_node "${2:?which node}" "${3:-1}" ;;
  stop) stop ;;
  *) echo "usage: $0 start [CPUS_PER_NODE] | kill-node 2 | join-node 2 [CPUS] | stop" >&2; exit 2 ;;
esac
