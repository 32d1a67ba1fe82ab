#!/usr/bin/env bash
# A cluster of "hosts" on this machine: one Linux network namespace per host, each with its
# own address, joined by a bridge. Faults between hosts are made with tc and netfilter.
# Everything stays on this machine: no default route, no NAT, no forwarding to the outside.
# Used by cluster/server/tests/multi_host.rs; README.md "Multi-host cluster by hand".
set -euo pipefail

PROG=${0##*/}

usage() {
  cat <<EOF
usage: $PROG [-c CLUSTER] COMMAND [ARGS...]      (as root)

Hosts of one cluster, each in its own network namespace, joined by a bridge on this machine.
This machine (the root namespace) is 198.18.C.1 on the bridge: it reaches every host, and
every host reaches it (run RabbitMQ and anything all hosts share here). 198.18.0.0/15 is
reserved for benchmarking, so no real host has these addresses; nothing leaves the machine.

Commands:
  up HOST[=N]...   create the hosts (and the bridge, if it is not there): namespace dosC-HOST,
                   address 198.18.C.N (N in 2..254; without =N, the lowest free one)
  down [--all]     remove every namespace, veth pair and the bridge of the cluster, killing
                   any process still running in its namespaces; safe to run when nothing is
                   there. --all: of every cluster this script made
  status           list the hosts: address, faults, processes
  addr HOST        print the host's address
  exec HOST CMD... run CMD in the host's namespace (ip netns exec)
  cut HOST         silently cut the host's link: every IP packet to or from it vanishes (no
                   RST, no ICMP error), as in a partition or with a frozen VM
  restore HOST     undo cut
  delay HOST MS    every packet to the host waits MS milliseconds: each round trip with it
                   takes MS ms longer (tc netem; where the kernel has no netem, a small
                   delayer on an NFQUEUE, which needs python3 and iptables-legacy)
  clear HOST       undo delay and cut

Options:
  -c, --cluster C  which cluster, 0..255 (default: \$DOS_NETNS_CLUSTER or 0); clusters use
                   distinct names (bridge dosbrC, namespaces dosC-*, veths dosChN) and
                   subnets (198.18.C.0/24), so several can run side by side
  -h, --help       this text

Pause and kill processes by their PID (kill -STOP, kill -CONT, kill -9).

Example:
  $PROG up data1 data2 api
  $PROG exec data1 env LISTEN_ADDRESS=\$($PROG addr data1):23334 dos-server data &
  $PROG cut data1; sleep 10; $PROG restore data1
  $PROG down
EOF
}

die() {
  echo "$PROG: $*" >&2
  exit 1
}

CLUSTER=${DOS_NETNS_CLUSTER:-0}
while [ $# -gt 0 ]; do
  case $1 in
    -c | --cluster)
      [ $# -ge 2 ] || die "$1 needs a cluster number"
      CLUSTER=$2
      shift 2
      ;;
    -h | --help | help)
      usage
      exit 0
      ;;
    --)
      shift
      break
      ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] || {
  usage >&2
  exit 2
}
CMD=$1
shift

check_cluster() {
  if ! [[ $1 =~ ^(0|[1-9][0-9]{0,2})$ ]] || [ "$1" -gt 255 ]; then
    die "cluster must be 0..255, not '$1'"
  fi
}
check_cluster "$CLUSTER"

BRIDGE=dosbr$CLUSTER
NET=198.18.$CLUSTER
NS_PREFIX=dos$CLUSTER-
STATE=/run/dos-netns/$CLUSTER

need_root() {
  [ "$(id -u)" -eq 0 ] || die "must run as root (network namespaces, bridges, tc)"
  command -v ip >/dev/null 2>&1 || die "ip not found (apt-get install iproute2)"
}

check_host() {
  [[ $1 =~ ^[a-z0-9][a-z0-9_-]{0,31}$ ]] || die "bad host name '$1' (a-z, 0-9, _ and -; up to 32)"
}

ns_of() { echo "$NS_PREFIX$1"; }

ns_exists() {
  local list
  list=$(ip netns list 2>/dev/null | awk '{print $1}')
  [[ $'\n'$list$'\n' == *$'\n'$1$'\n'* ]]
}

# Namespaces of this cluster, one a line.
cluster_namespaces() {
  ip netns list 2>/dev/null | awk '{print $1}' | { grep -E "^dos$CLUSTER-" || true; }
}

# The last number of a host's address (from its eth0), empty when it has none.
host_index() {
  local out
  out=$(ip -n "$(ns_of "$1")" -4 -o addr show dev eth0 2>/dev/null) || return 0
  awk '{split($4, a, "/"); n = split(a[1], b, "."); print b[n]; exit}' <<<"$out"
}

# The host must exist; prints its index.
existing_host() {
  check_host "$1"
  ns_exists "$(ns_of "$1")" || die "no host '$1' in cluster $CLUSTER (see $PROG status)"
  local n
  n=$(host_index "$1")
  [ -n "$n" ] || die "host '$1' has no address (half made? run $PROG down)"
  echo "$n"
}

# Bridge-side end of host N's veth pair, in this (the root) namespace.
veth_of() { echo "dos${CLUSTER}h$1"; }

bridge_up() {
  if ip link show dev "$BRIDGE" >/dev/null 2>&1; then
    return
  fi
  ip link add "$BRIDGE" type bridge
  # Bridged frames go straight to the forwarding state (no STP), and no IPv6 chatter.
  sysctl -qw "net.ipv6.conf.$BRIDGE.disable_ipv6=1" >/dev/null 2>&1 || true
  ip addr add "$NET.1/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
}

remove_host() {
  local ns=$1 n=$2
  ip netns del "$ns" 2>/dev/null || true
  [ -z "$n" ] || ip link del "$(veth_of "$n")" 2>/dev/null || true
}

cmd_up() {
  need_root
  [ $# -ge 1 ] || die "up needs at least one HOST"
  local used=" " ns n spec host veth
  for ns in $(cluster_namespaces); do
    n=$(host_index "${ns#"$NS_PREFIX"}")
    [ -z "$n" ] || used+="$n "
  done
  # Check every host first, so that a bad argument creates nothing.
  local hosts=() idxs=() seen=" "
  for spec in "$@"; do
    host=${spec%%=*}
    check_host "$host"
    [[ $seen != *" $host "* ]] || die "host '$host' given twice"
    seen+="$host "
    ! ns_exists "$(ns_of "$host")" || die "host '$host' is already up"
    if [[ $spec == *=* ]]; then
      n=${spec#*=}
      if ! [[ $n =~ ^[1-9][0-9]{0,2}$ ]] || [ "$n" -lt 2 ] || [ "$n" -gt 254 ]; then
        die "$spec: N must be 2..254"
      fi
      [[ $used != *" $n "* ]] || die "$spec: $NET.$n is taken"
      used+="$n "
      hosts+=("$host")
      idxs+=("$n")
    else
      hosts+=("$host")
      idxs+=("")
    fi
  done
  local i
  for i in "${!hosts[@]}"; do
    if [ -z "${idxs[$i]}" ]; then
      n=2
      while [[ $used == *" $n "* ]]; do n=$((n + 1)); done
      [ "$n" -le 254 ] || die "no free address left in $NET.0/24"
      used+="$n "
      idxs[i]=$n
    fi
  done

  bridge_up
  for i in "${!hosts[@]}"; do
    host=${hosts[$i]}
    n=${idxs[$i]}
    ns=$(ns_of "$host")
    veth=$(veth_of "$n")
    # Undo this host's half-made parts if a step fails.
    trap 'remove_host "$ns" "$n"' ERR
    ip netns add "$ns"
    ip link add "$veth" type veth peer name "dos${CLUSTER}p$n"
    ip link set "dos${CLUSTER}p$n" netns "$ns"
    ip -n "$ns" link set "dos${CLUSTER}p$n" name eth0
    sysctl -qw "net.ipv6.conf.$veth.disable_ipv6=1" >/dev/null 2>&1 || true
    ip link set "$veth" alias "dos-netns cluster $CLUSTER host $host"
    ip link set "$veth" master "$BRIDGE"
    ip link set "$veth" up
    # The host's only route is the one its address makes: 198.18.C.0/24 on eth0.
    ip -n "$ns" addr add "$NET.$n/24" dev eth0
    ip -n "$ns" link set lo up
    ip -n "$ns" link set eth0 up
    trap - ERR
    echo "$host $NET.$n"
  done
}

# Frees host N's NFQUEUE delayer (kills it, drops the rule), if it has one.
stop_delayer() {
  local ns=$1 n=$2 pidfile=$STATE/delay.$2.pid pid
  if ns_exists "$ns"; then
    # Our own namespace: its filter table holds nothing but the delay rule.
    ip netns exec "$ns" iptables-legacy -w -F INPUT >/dev/null 2>&1 || true
  fi
  if [ -f "$pidfile" ]; then
    pid=$(cat "$pidfile")
    [ -z "$pid" ] || kill "$pid" 2>/dev/null || true
    rm -f "$pidfile"
  fi
  rm -f "$STATE/delay.$n.log"
}

cmd_down() {
  need_root
  local clusters=("$CLUSTER")
  if [ "${1:-}" = "--all" ]; then
    mapfile -t clusters < <(
      {
        ip netns list 2>/dev/null | awk '{print $1}' | sed -nE 's/^dos([0-9]+)-.*/\1/p'
        ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed -nE 's/^dosbr([0-9]+)(@.*)?$/\1/p; s/^dos([0-9]+)h[0-9]+(@.*)?$/\1/p'
        ls /run/dos-netns 2>/dev/null || true
      } | sort -un
    )
  elif [ $# -gt 0 ]; then
    die "down takes no HOST (it removes the whole cluster; --all for every cluster)"
  fi
  local c ns pid link
  for c in "${clusters[@]}"; do
    [[ $c =~ ^[0-9]+$ ]] || continue
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | { grep -E "^dos$c-" || true; }); do
      # A namespace lives on while a process is in it: end them all (SIGKILL also ends a
      # stopped process).
      for pid in $(ip netns pids "$ns" 2>/dev/null); do
        kill -9 "$pid" 2>/dev/null || true
      done
      ip netns del "$ns" 2>/dev/null || true
    done
    # Deleting one end of a veth pair deletes both, wherever the other end is.
    for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | { grep -E "^dos${c}[hp][0-9]+$" || true; }); do
      ip link del "$link" 2>/dev/null || true
    done
    ip link del "dosbr$c" 2>/dev/null || true
    local f
    for f in "/run/dos-netns/$c"/delay.*.pid; do
      [ -f "$f" ] || continue
      kill "$(cat "$f")" 2>/dev/null || true
    done
    rm -rf "/run/dos-netns/$c"
  done
  rmdir /run/dos-netns 2>/dev/null || true
}

cmd_status() {
  need_root
  local ns host n veth faults pids
  if ! ip link show dev "$BRIDGE" >/dev/null 2>&1; then
    echo "cluster $CLUSTER: not up"
  else
    echo "cluster $CLUSTER: bridge $BRIDGE $NET.1/24"
  fi
  # Hosts in address order.
  for ns in $(cluster_namespaces); do
    host=${ns#"$NS_PREFIX"}
    n=$(host_index "$host")
    echo "${n:-0} $host" # 0: no address (half made)
  done | sort -n | while read -r n host; do
    [ "$n" != 0 ] || n=""
    ns=$(ns_of "$host")
    faults=""
    if [ -n "$n" ]; then
      veth=$(veth_of "$n")
      [[ $(tc filter show dev "$veth" ingress 2>/dev/null) != *bpf* ]] || faults+=" cut"
      [[ $(tc qdisc show dev "$veth" 2>/dev/null) != *netem* ]] || faults+=" delay"
      [ ! -f "$STATE/delay.$n.pid" ] || faults+=" delay"
    fi
    pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
    printf '%-16s %-15s faults:%-12s pids: %s\n' "$host" "${n:+$NET.$n}" "${faults:- none}" "${pids:-none}"
  done
}

cmd_addr() {
  [ $# -eq 1 ] || die "usage: $PROG addr HOST"
  need_root
  local n
  n=$(existing_host "$1")
  echo "$NET.$n"
}

cmd_exec() {
  [ $# -ge 2 ] || die "usage: $PROG exec HOST CMD [ARGS...]"
  need_root
  existing_host "$1" >/dev/null
  local ns
  ns=$(ns_of "$1")
  shift
  exec ip netns exec "$ns" "$@"
}

# A classic BPF program for tc's bpf classifier in direct-action mode: IPv4 and IPv6
# frames get TC_ACT_SHOT (dropped, 2), anything else (ARP) TC_ACT_UNSPEC (-1, passes on).
#   ld  skb->protocol (ancillary)      jeq #0x0806 (ARP)? -> pass : drop
DROP_IP_BPF="4,40 0 0 4294963200,21 0 1 2054,6 0 0 4294967295,6 0 0 2"

cmd_cut() {
  [ $# -eq 1 ] || die "usage: $PROG cut HOST"
  need_root
  command -v tc >/dev/null 2>&1 || die "tc not found (apt-get install iproute2)"
  local n veth
  n=$(existing_host "$1")
  veth=$(veth_of "$n")
  # Why this way: the drop happens on the bridge side of the host's veth pair, in both
  # directions, so that no sender ever learns of it. A packet a sender's own stack drops
  # (a netfilter DROP in its OUTPUT chain, a qdisc drop on its own interface) comes back to
  # it as an error (EPERM, ENOBUFS); a link set down makes address resolution fail, and
  # senders then get "no route to host" within seconds. Here ARP still passes, so the peers
  # keep resolving the host, and every TCP segment (SYNs, data, FINs, RSTs) simply vanishes:
  # connects and calls hang until their own timeouts, as with a partition behind a router,
  # a hung host or a frozen VM. (A clsact qdisc with a classic BPF filter needs no netem.)
  tc qdisc del dev "$veth" clsact 2>/dev/null || true
  tc qdisc add dev "$veth" clsact
  tc filter add dev "$veth" ingress prio 1 bpf da bytecode "$DROP_IP_BPF"
  tc filter add dev "$veth" egress prio 1 bpf da bytecode "$DROP_IP_BPF"
}

cmd_restore() {
  [ $# -eq 1 ] || die "usage: $PROG restore HOST"
  need_root
  local n
  n=$(existing_host "$1")
  tc qdisc del dev "$(veth_of "$n")" clsact 2>/dev/null || true
}

# The NFQUEUE delayer (used where the kernel has no netem): holds every packet the queue
# hands it for DELAY_MS, then accepts it, in order. Arguments: DELAY_MS PIDFILE. It writes
# PIDFILE once the queue is bound.
DELAYER_PY='
import collections, os, select, socket, struct, sys, time

delay = int(sys.argv[1]) / 1000.0
pidfile = sys.argv[2]
QUEUE = 0
SUBSYS = 3 << 8  # NFNL_SUBSYS_QUEUE
PACKET, CONFIG, VERDICT_BATCH = 0, 2, 3
REQUEST, ACK = 1, 4

sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER
try:
    sock.setsockopt(socket.SOL_SOCKET, 33, 32 << 20)  # SO_RCVBUFFORCE
except OSError:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
sock.setsockopt(270, 5, 1)  # SOL_NETLINK, NETLINK_NO_ENOBUFS
sock.bind((0, 0))
seq = 0


def attr(kind, payload):
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * (-n % 4)


def send(msg, flags, payload):
    global seq
    seq += 1
    body = struct.pack("!BBH", socket.AF_UNSPEC, 0, QUEUE) + payload
    sock.send(struct.pack("=IHHII", 16 + len(body), SUBSYS | msg, flags, seq, 0) + body)


def acked():
    data = sock.recv(65536)
    kind = struct.unpack_from("=H", data, 4)[0]
    err = struct.unpack_from("=i", data, 16)[0] if kind == 2 else 0
    if err:
        sys.exit("delayer: netlink error %d" % err)


send(CONFIG, REQUEST | ACK, attr(1, struct.pack("!BBH", 1, 0, 0)))  # bind the queue
acked()
send(
    CONFIG,
    REQUEST | ACK,
    attr(2, struct.pack("!IB", 0xFFFF, 1))  # copy metadata only
    + attr(3, struct.pack("!I", 1 << 16))  # queue length
    + attr(4, struct.pack("!I", 4))  # flags to set: GSO
    + attr(5, struct.pack("!I", 4)),  # GSO: hand over big segments whole
)
acked()
with open(pidfile + ".tmp", "w") as f:
    f.write("%d\n" % os.getpid())
os.rename(pidfile + ".tmp", pidfile)

sock.setblocking(False)
held = collections.deque()
while True:
    wait = max(0.0, held[0][0] - time.monotonic()) if held else None
    select.select([sock], [], [], wait)
    now = time.monotonic()
    while True:
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            break
        off = 0
        while off + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, off)
            if length < 16:
                break
            if kind == SUBSYS | PACKET:
                a = off + 20
                while a + 4 <= off + length:
                    alen, akind = struct.unpack_from("=HH", data, a)
                    if alen < 4:
                        break
                    if akind & 0x7FFF == 1:  # NFQA_PACKET_HDR: the packet id
                        held.append((now + delay, struct.unpack_from("!I", data, a + 4)[0]))
                    a += (alen + 3) & ~3
            off += (length + 3) & ~3
    last = None
    while held and held[0][0] <= now:
        last = held.popleft()[1]
    if last is not None:
        # NF_ACCEPT every packet up to this id (ids rise, all wait the same).
        send(VERDICT_BATCH, REQUEST, attr(2, struct.pack("!II", 1, last)))
'

cmd_delay() {
  [ $# -eq 2 ] || die "usage: $PROG delay HOST MS"
  need_root
  command -v tc >/dev/null 2>&1 || die "tc not found (apt-get install iproute2)"
  [[ $2 =~ ^[0-9]{1,6}$ ]] || die "MS must be a number of milliseconds, not '$2'"
  local n veth ns ms=$((10#$2))
  n=$(existing_host "$1")
  veth=$(veth_of "$n")
  ns=$(ns_of "$1")
  stop_delayer "$ns" "$n"
  tc qdisc del dev "$veth" root 2>/dev/null || true
  [ "$ms" -gt 0 ] || return 0
  # Packets to the host wait on the bridge side of its veth (what leaves the host is never
  # held in its own stack, so TCP's small-queue limit does not slow its sending).
  if tc qdisc add dev "$veth" root netem delay "${ms}ms" limit 100000 2>/dev/null; then
    return
  fi
  # No netem in this kernel: hold the packets in user space, in the host's INPUT chain.
  command -v python3 >/dev/null 2>&1 || die "no netem in this kernel, and no python3 for the NFQUEUE delayer"
  command -v iptables-legacy >/dev/null 2>&1 || die "no netem in this kernel, and no iptables-legacy for the NFQUEUE delayer (apt-get install iptables)"
  mkdir -p "$STATE"
  local pidfile=$STATE/delay.$n.pid
  rm -f "$pidfile"
  setsid ip netns exec "$ns" python3 -c "$DELAYER_PY" "$ms" "$pidfile" \
    </dev/null >"$STATE/delay.$n.log" 2>&1 &
  local _
  for _ in $(seq 1 50); do
    [ -s "$pidfile" ] && break
    sleep 0.1
  done
  [ -s "$pidfile" ] || die "the NFQUEUE delayer did not start: $(cat "$STATE/delay.$n.log")"
  # --queue-bypass: should the delayer die, packets pass instead of being dropped.
  ip netns exec "$ns" iptables-legacy -w -A INPUT -i eth0 -j NFQUEUE --queue-num 0 --queue-bypass
}

cmd_clear() {
  [ $# -eq 1 ] || die "usage: $PROG clear HOST"
  need_root
  local n veth
  n=$(existing_host "$1")
  veth=$(veth_of "$n")
  stop_delayer "$(ns_of "$1")" "$n"
  tc qdisc del dev "$veth" root 2>/dev/null || true
  tc qdisc del dev "$veth" clsact 2>/dev/null || true
}

case $CMD in
  up) cmd_up "$@" ;;
  down) cmd_down "$@" ;;
  status | list) cmd_status "$@" ;;
  addr) cmd_addr "$@" ;;
  exec) cmd_exec "$@" ;;
  cut) cmd_cut "$@" ;;
  restore) cmd_restore "$@" ;;
  delay) cmd_delay "$@" ;;
  clear) cmd_clear "$@" ;;
  *) die "unknown command '$CMD' (see $PROG --help)" ;;
esac
