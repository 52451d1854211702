# Shared by start.sh and stop.sh (sourced).
# alive PIDFILE NAME: the pid file names a live process called NAME (a zombie counts as gone:
# PID 1 here reaps orphans late and `kill -0` still succeeds on zombies).
alive() {
    local pid stat comm
    pid=$(cat "$1" 2>/dev/null) || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    stat=$(ps -o stat= -p "$pid" 2>/dev/null) || return 1
    comm=$(ps -o comm= -p "$pid" 2>/dev/null) || return 1
    [[ -n "$stat" && "$stat" != Z* && "$comm" == "$2"* ]]
}

# ---- the multi-node test cluster (start.sh --nodes N): one network namespace per node ------------
# Node i is the namespace NET_PREFIX-n<i> with hostname NET_PREFIX-n<i> and address NET_SUBNET.(10+i),
# joined by the bridge NET_PREFIX-br0 (NET_SUBNET.1, where slurmctld listens). Nothing routes
# beyond that /24: traffic never leaves the namespaces and the bridge this kit creates.
NET_PREFIX=${NET_PREFIX:-unas}
NET_SUBNET=${NET_SUBNET:-10.77.0}
NET_BRIDGE="$NET_PREFIX-br0"
HOSTS_BEGIN="# >>> unrealnas test-cluster nodes (slurm/test-cluster/start.sh) >>>"
HOSTS_END="# <<< unrealnas test-cluster nodes <<<"

node_name() { echo "$NET_PREFIX-n$1"; }
node_addr() { echo "$NET_SUBNET.$((10 + $1))"; }

# net_up N: bridge, N namespaces with a veth each, /etc/hosts entries (idempotent).
net_up() {
    local n=$1 i ns
    ip link show "$NET_BRIDGE" >/dev/null 2>&1 || ip link add "$NET_BRIDGE" type bridge
    ip addr show dev "$NET_BRIDGE" | grep -qF " $NET_SUBNET.1/24 " || ip addr add "$NET_SUBNET.1/24" dev "$NET_BRIDGE"
    ip link set "$NET_BRIDGE" up
    for i in $(seq "$n"); do
        ns=$(node_name "$i")
        ip netns list | grep -qx "$ns\( .*\)\?" || ip netns add "$ns"
        if ! ip -n "$ns" link show "$NET_PREFIX-e$i" >/dev/null 2>&1; then
            ip link del "$NET_PREFIX-h$i" 2>/dev/null || true
            ip link add "$NET_PREFIX-h$i" type veth peer name "$NET_PREFIX-e$i"
            ip link set "$NET_PREFIX-e$i" netns "$ns"
        fi
        ip link set "$NET_PREFIX-h$i" master "$NET_BRIDGE"
        ip link set "$NET_PREFIX-h$i" up
        ip -n "$ns" addr show dev "$NET_PREFIX-e$i" | grep -qF " $(node_addr "$i")/24 " \
            || ip -n "$ns" addr add "$(node_addr "$i")/24" dev "$NET_PREFIX-e$i"
        ip -n "$ns" link set "$NET_PREFIX-e$i" up
        ip -n "$ns" link set lo up
    done
    hosts_remove
    { echo "$HOSTS_BEGIN"; for i in $(seq "$n"); do echo "$(node_addr "$i") $(node_name "$i")"; done; echo "$HOSTS_END"; } \
        >> /etc/hosts
}

# hosts_remove: drop the block net_up added to /etc/hosts, comparing whole lines as plain text
# (rewritten in place, not replaced: /etc/hosts may be a bind mount).
hosts_remove() {
    grep -qxF "$HOSTS_BEGIN" /etc/hosts 2>/dev/null || return 0
    local kept
    kept=$(awk -v b="$HOSTS_BEGIN" -v e="$HOSTS_END" '$0 == b {skip = 1; next} $0 == e {skip = 0; next} !skip' \
        /etc/hosts) || return 1
    printf '%s\n' "$kept" > /etc/hosts
}

# net_down: kill what still runs in our namespaces, delete them, their veths and the bridge (idempotent).
net_down() {
    local ns pids
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$NET_PREFIX-n[0-9]+\$"); do
        pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
        # shellcheck disable=SC2086  # one pid per word
        [ -z "${pids// /}" ] || kill -KILL $pids 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
    done
    for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E "^$NET_PREFIX-h[0-9]+\$"); do
        ip link del "$link" 2>/dev/null || true
    done
    ip link del "$NET_BRIDGE" 2>/dev/null || true
    hosts_remove
}
