#!/bin/sh
# UML guest init for tests/uml.rs (runs as PID 1 on a read-only hostfs root).
#
# Kernel-command-line KEY=value words arrive as environment variables:
#   ID=n          this guest's address: 169.254.0.n/16 on eth0 (required, 1..254)
#   PEERS=a,b     peers to ping (169.254.0.a, ...); empty = no pings
#   ARPING=1      also arping each peer (iputils-arping)
#   WAIT=s        how long to keep retrying a peer that does not answer (default 40)
#   HOLD=s        after the results, stay up s seconds (peers may still be
#                 pinging us; the test may inspect the switch meanwhile)
#   RELEASE=path  end that wait early once this host file exists (the root is
#                 the host's / through hostfs); HOLD defaults to 60 with it
#
# Output (console), one line each, machine readable:
#   GUEST <id> UP               eth0 configured
#   RESULT ping <ip> ok|fail
#   RESULT arping <ip> ok|fail
#   GUEST <id> DONE             all results printed
#   GUEST <id> END              about to power off
# Only 169.254.0.0/16 link-local addresses are ever used.
# The host side (tests/uml.rs) also passes GLIBC_TUNABLES to keep glibc off
# AVX code paths; see the comment at the top of tests/uml.rs.

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

mount -t proc proc /proc 2>/dev/null
mount -t sysfs sysfs /sys 2>/dev/null
# The root is read-only: scratch space on /run. Not on /tmp: the host test's
# directories (RELEASE) live there and must stay visible through hostfs.
mount -t tmpfs -o size=4m tmpfs /run 2>/dev/null
S=/run

case "$ID" in
    ''|*[!0-9]*) say "GUEST ? ERROR bad ID '$ID'"; finish ;;
esac
if [ "$ID" -lt 1 ] || [ "$ID" -gt 254 ]; then
    say "GUEST $ID ERROR ID out of range"; finish
fi
MYIP=169.254.0.$ID
WAIT=${WAIT:-40}

ip link set lo up
if ! ip link show eth0 >/dev/null 2>&1; then
    say "GUEST $ID ERROR no eth0"
    for p in $(echo "${PEERS:-}" | tr ',' ' '); do say "RESULT ping 169.254.0.$p fail"; done
    say "GUEST $ID DONE"
    finish
fi
ip addr add "$MYIP/16" dev eth0
ip link set eth0 up
say "GUEST $ID UP $MYIP $(cat /sys/class/net/eth0/address 2>/dev/null)"

start=$(date +%s)
deadline=$((start + WAIT))

# ping_peer IP: retry until it answers or the deadline passes
ping_peer() {
    while :; do
        if ping -n -q -c 2 -i 0.5 -w 8 "$1" >$S/ping.out 2>&1; then
            return 0
        fi
        [ "$(date +%s)" -ge "$deadline" ] && { cat $S/ping.out; return 1; }
        sleep 0.5
    done
}

arping_peer() {
    while :; do
        if arping -c 2 -w 5 -I eth0 "$1" >$S/arping.out 2>&1; then
            return 0
        fi
        [ "$(date +%s)" -ge "$deadline" ] && { cat $S/arping.out; return 1; }
        sleep 0.5
    done
}

for p in $(echo "${PEERS:-}" | tr ',' ' '); do
    case "$p" in
        ''|*[!0-9]*) say "GUEST $ID ERROR bad peer '$p'"; continue ;;
    esac
    if [ "$p" -lt 1 ] || [ "$p" -gt 254 ]; then
        say "GUEST $ID ERROR bad peer '$p'"; continue
    fi
    ip=169.254.0.$p
    if ping_peer "$ip"; then say "RESULT ping $ip ok"; else say "RESULT ping $ip fail"; fi
    if [ "${ARPING:-0}" = 1 ]; then
        if arping_peer "$ip"; then say "RESULT arping $ip ok"; else say "RESULT arping $ip fail"; fi
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
