#!/bin/sh
# UML guest init for the 802.1Q test in tests/vlan.rs (runs as PID 1 on a
# read-only hostfs root).
#
# Kernel-command-line KEY=value words arrive as environment variables:
#   ID=n          this guest's address: 169.254.0.n/16 (1..254)
#   VID=v         talk through eth0.v (the kernel tags with VLAN v); empty:
#                 untagged on eth0
#   PEERS=a,b     guests that must answer a ping (retried until WAIT)
#   STRANGERS=c   guests that must not answer (one short try each)
#   WAIT=s        how long to retry a peer (default 30)
#   HOLD=s        after the results, stay up s seconds so that peers can
#                 still ping us; RELEASE=path ends that wait early
#
# Output, one line each:
#   GUEST <id> UP <dev>
#   GUEST <id> NOVLAN <why>     the kernel could not make eth0.<vid>
#   RESULT ping <ip> ok|fail
#   GUEST <id> DONE
# Only 169.254.0.0/16 link-local addresses are used.

PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH

say() { echo "$*"; }

finish() {
    say "GUEST ${ID:-?} END"
    /usr/bin/busybox poweroff -f
    /usr/bin/busybox halt -f
    exit 0
}

mount -t proc proc /proc 2>/dev/null
mount -t sysfs sysfs /sys 2>/dev/null
mount -t tmpfs -o size=4m tmpfs /run 2>/dev/null
S=/run
WAIT=${WAIT:-30}

ip link set lo up
dev=eth0
if [ -n "${VID:-}" ]; then
    # The Debian UML kernel builds 802.1Q as a module; the host has the
    # modules but no kmod, so load them (and their dependencies) by path.
    M=/usr/lib/uml/modules/$(uname -r)/kernel/net
    for m in llc/llc 802/stp 802/garp 802/mrp 8021q/8021q; do
        /usr/bin/busybox insmod "$M/$m.ko" >$S/insmod.out 2>&1
    done
    ip link set eth0 up
    if ! ip link add link eth0 name "eth0.$VID" type vlan id "$VID" >$S/vlan.out 2>&1; then
        say "GUEST $ID NOVLAN $(cat $S/insmod.out $S/vlan.out | tr '\n' ' ')"
        say "GUEST $ID DONE"
        finish
    fi
    dev=eth0.$VID
fi
ip addr add "169.254.0.$ID/16" dev "$dev"
ip link set "$dev" up
say "GUEST $ID UP $dev"

deadline=$(( $(date +%s) + WAIT ))
for p in $(echo "${PEERS:-}" | tr ',' ' '); do
    ok=fail
    while :; do
        if ping -n -q -c 1 -W 1 "169.254.0.$p" >/dev/null 2>&1; then ok=ok; break; fi
        [ "$(date +%s)" -ge "$deadline" ] && break
    done
    say "RESULT ping 169.254.0.$p $ok"
done
for p in $(echo "${STRANGERS:-}" | tr ',' ' '); do
    if ping -n -q -c 2 -W 2 "169.254.0.$p" >/dev/null 2>&1; then
        say "RESULT ping 169.254.0.$p ok"
    else
        say "RESULT ping 169.254.0.$p fail"
    fi
done
say "GUEST $ID DONE"

end=$(( $(date +%s) + ${HOLD:-0} ))
while [ "$(date +%s)" -lt "$end" ]; do
    [ -n "${RELEASE:-}" ] && [ -e "$RELEASE" ] && break
    sleep 0.2
done
finish
