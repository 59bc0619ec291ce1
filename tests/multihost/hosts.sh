#!/usr/bin/env bash
# Fake hosts for the multi-host tests (root only): N network namespaces, each a "host" with its
# own address on one bridge, which lives in a namespace of its own (the "switch"), so nothing
# touches this machine's own network.
#
#   hosts.sh up   NAME N SUBNET   # e.g. hosts.sh up fv123 4 10.213.7 -> hosts NAME-h0..h3 at
#                                 # SUBNET.10 .. SUBNET.13/24, switch NAME-sw
#   hosts.sh down NAME N          # kills what still runs in them, removes them
#
# Run a command on host i: ip netns exec NAME-hI unshare --uts sh -c 'hostname H; exec "$@"' sh CMD...
# (its own UTS namespace gives it its own host name, so ferrovod sees a host of its own).
set -euo pipefail
action=${1:?usage: hosts.sh up NAME N SUBNET | down NAME N}
name=${2:?name}
n=${3:?number of hosts}

case "$action" in
up)
    subnet=${4:?subnet, e.g. 10.213.7}
    ip netns add "$name-sw"
    ip -n "$name-sw" link add br0 type bridge
    ip -n "$name-sw" link set br0 up
    ip -n "$name-sw" link set lo up
    for i in $(seq 0 $((n - 1))); do
        host="$name-h$i"
        ip netns add "$host"
        # Created in the switch, one end moved to the host: no name is ever taken in the root
        # namespace.
        ip -n "$name-sw" link add "p$i" type veth peer name eth0 netns "$host"
        ip -n "$name-sw" link set "p$i" master br0 up
        ip -n "$host" addr add "$subnet.$((10 + i))/24" dev eth0
        ip -n "$host" link set eth0 up
        ip -n "$host" link set lo up
    done
    ;;
down)
    for i in $(seq 0 $((n - 1))); do
        host="$name-h$i"
        if ip netns list | grep -qw "$host"; then
            pids=$(ip netns pids "$host" || true)
            [ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
            ip netns del "$host"
        fi
    done
    ! ip netns list | grep -qw "$name-sw" || ip netns del "$name-sw"
    ;;
*)
    echo "hosts.sh: unknown action $action" >&2
    exit 2
    ;;
esac
