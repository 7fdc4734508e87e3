#!/bin/sh
# UML guest init for the guests that tests/common/uml.rs boots for
# tests/uml.rs and tests/vlan.rs (runs as PID 1 on a read-only hostfs root).
#
# Kernel-command-line KEY=value words arrive as environment variables:
#   ID=n          this guest's address: 169.254.0.n/16 (required, 1..254)
#   VLAN=v        talk through eth0.v (the kernel tags with VLAN v);
#                 empty: untagged on eth0
#   PEERS=a,b     guests that must answer a ping (169.254.0.a, ...), retried
#                 until WAIT; empty = no pings
#   STRANGERS=c,d guests that must not answer (one short try each)
#   ARPING=1      also arping each peer (iputils-arping)
#   WAIT=s        how long to keep retrying a peer that does not answer (default 30)
#   HOLD=s        after the results, stay up s seconds (peers may still be
#                 pinging us; the test may inspect the switch meanwhile)
#   RELEASE=path  end that wait early once this host file exists (the root is
#                 the host's / through hostfs); HOLD defaults to 60 with it
#
# Output (console), one line each, machine readable:
#   GUEST <id> UP <ip> <dev> <mac>  the interface is configured
#   GUEST <id> ERROR <why>          bad parameters, no eth0
#   GUEST <id> NOVLAN <why>         the kernel could not make eth0.<v>
#   RESULT ping <ip> ok|fail
#   RESULT arping <ip> ok|fail
#   GUEST <id> DONE                 all results printed (or given up)
#   GUEST <id> END                  about to power off
# Only 169.254.0.0/16 link-local addresses are ever used.
# The host side also passes GLIBC_TUNABLES to keep glibc off AVX code paths;
# see the comment at the top of tests/common/uml.rs.

PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH

say() { echo "$*"; }

finish() {
    say "GUEST ${ID:-?} END"
    sync 2>/dev/null
    /usr/bin/busybox poweroff -f
    # not reached normally; if it is, halting (or PID 1 exiting, which
    # panics the UML kernel) still ends the guest
    /usr/bin/busybox halt -f
    exit 0
}

# give_up WHAT WHY: no results can come; report and power off
give_up() {
    say "GUEST $ID $1 $2"
    say "GUEST $ID DONE"
    finish
}

# is_id N: N is a guest number, 1..254
is_id() {
    case "$1" in
        ''|*[!0-9]*) return 1 ;;
    esac
    [ "$1" -ge 1 ] && [ "$1" -le 254 ]
}

# ids LIST: the comma-separated LIST, one word each
ids() { echo "$1" | tr ',' ' '; }

mount -t proc proc /proc 2>/dev/null
mount -t sysfs sysfs /sys 2>/dev/null
# The root is read-only: scratch space on /run. Not on /tmp: the host test's
# directories (RELEASE) live there and must stay visible through hostfs.
mount -t tmpfs -o size=4m tmpfs /run 2>/dev/null
S=/run

is_id "$ID" || { ID="?"; give_up ERROR "bad ID"; }
MYIP=169.254.0.$ID
WAIT=${WAIT:-30}

ip link set lo up
ip link show eth0 >/dev/null 2>&1 || give_up ERROR "no eth0"
dev=eth0
if [ -n "${VLAN:-}" ]; then
    # The Debian UML kernel builds 802.1Q as a module; the host has the
    # modules but no kmod, so load them (and their dependencies) by path.
    M=/usr/lib/uml/modules/$(uname -r)/kernel/net
    for m in llc/llc 802/stp 802/garp 802/mrp 8021q/8021q; do
        /usr/bin/busybox insmod "$M/$m.ko" >$S/insmod.out 2>&1
    done
    ip link set eth0 up
    if ! ip link add link eth0 name "eth0.$VLAN" type vlan id "$VLAN" >$S/vlan.out 2>&1; then
        give_up NOVLAN "$(cat $S/insmod.out $S/vlan.out | tr '\n' ' ')"
    fi
    dev=eth0.$VLAN
fi
ip addr add "$MYIP/16" dev "$dev"
ip link set "$dev" up
say "GUEST $ID UP $MYIP $dev $(cat /sys/class/net/eth0/address 2>/dev/null)"

deadline=$(( $(date +%s) + WAIT ))

# check WHAT IP COMMAND...: retry COMMAND until it succeeds or the deadline
# passes (then show its output), and report the outcome
check() {
    what=$1 target=$2
    shift 2
    while :; do
        if "$@" >$S/check.out 2>&1; then
            say "RESULT $what $target ok"
            return
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            cat $S/check.out
            say "RESULT $what $target fail"
            return
        fi
        sleep 0.5
    done
}

for p in $(ids "${PEERS:-}"); do
    is_id "$p" || { say "GUEST $ID ERROR bad peer '$p'"; continue; }
    ip=169.254.0.$p
    check ping "$ip" ping -n -q -c 2 -i 0.5 -w 8 "$ip"
    if [ "${ARPING:-0}" = 1 ]; then
        check arping "$ip" arping -c 2 -w 5 -I "$dev" "$ip"
    fi
done
for p in $(ids "${STRANGERS:-}"); do
    is_id "$p" || { say "GUEST $ID ERROR bad stranger '$p'"; continue; }
    ip=169.254.0.$p
    if ping -n -q -c 2 -W 2 "$ip" >/dev/null 2>&1; then
        say "RESULT ping $ip ok"
    else
        say "RESULT ping $ip fail"
    fi
done
say "GUEST $ID DONE"

# stay reachable (peers may still be pinging us, the test may inspect the switch)
if [ -n "${RELEASE:-}" ] || [ -n "${HOLD:-}" ]; then
    end=$(( $(date +%s) + ${HOLD:-60} ))
    while [ "$(date +%s)" -lt "$end" ]; do
        [ -n "${RELEASE:-}" ] && [ -e "$RELEASE" ] && break
        sleep 0.2
    done
fi
finish
