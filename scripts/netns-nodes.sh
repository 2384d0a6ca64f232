# Sourced by the two-node rehearsal scripts (slurm/local/two-node-cluster.sh, scripts/two-node-ray.sh):
# two network namespaces as the nodes of a cluster on one machine (root).

# nodes_up BRIDGE NET PREFIX: a bridge BRIDGE at NET.1/24 (the host's address on it) and namespaces
# PREFIX1, PREFIX2 at NET.11, NET.12, each with loopback and eth0 (a veth to the bridge, BRIDGE1 and
# BRIDGE2 on the host side) and a default route through the host.
nodes_up() {
  local bridge=$1 net=$2 prefix=$3 i
  ip link add "$bridge" type bridge
  ip addr add "$net.1/24" dev "$bridge"
  ip link set "$bridge" up
  for i in 1 2; do
    ip netns add "$prefix$i"
    ip link add "$bridge$i" type veth peer name eth0 netns "$prefix$i"
    ip link set "$bridge$i" master "$bridge" up
    ip -n "$prefix$i" addr add "$net.1$i/24" dev eth0
    ip -n "$prefix$i" link set eth0 up
    ip -n "$prefix$i" link set lo up
    ip -n "$prefix$i" route add default via "$net.1"
  done
}

# nodes_down BRIDGE PREFIX: kill what runs in the namespaces (they live on while a process holds
# them), then remove them, their veths and the bridge. Safe to run when none of it exists.
nodes_down() {
  local bridge=$1 prefix=$2 i pids
  for i in 1 2; do
    if ip netns list | grep -qw "$prefix$i"; then
      for _ in $(seq 50); do
        pids=$(ip netns pids "$prefix$i")
        [ -z "$pids" ] && break
        kill -9 $pids 2>/dev/null || true
        sleep 0.2
      done
      ip netns del "$prefix$i"
    fi
    ip link del "$bridge$i" 2>/dev/null || true
  done
  ip link del "$bridge" 2>/dev/null || true
}
