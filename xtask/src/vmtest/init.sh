#!/bin/busybox sh
# /init of the vmtest initramfs: runs the scenarios against the real probes on this kernel and
# writes what it saw, in blocks, to the second serial port (/dev/ttyS1), which the host reads and
# judges (xtask/src/vmtest/checks.rs). This script asserts nothing itself: it drives processes.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t debugfs debugfs /sys/kernel/debug
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
ip link set lo up
# sock_diag for the socket inventory: modules on Debian's kernels, loaded in dependency order.
for module in /modules/*.ko; do
    [ -e "$module" ] && insmod "$module"
done

OUT=/dev/ttyS1
# One block: its name, then the file as it is.
emit() {
    { echo "@@vmtest begin $1"; cat "$2"; echo "@@vmtest end $1"; } >> "$OUT"
}
value() {
    echo "$2" > /tmp/value
    emit "$1" /tmp/value
}
fail() {
    value fatal "$1"
    poweroff -f
}

value kernel "$(uname -r)"
value btf "$(ls -l /sys/kernel/btf/vmlinux 2>&1)"
value modules "$(cut -d' ' -f1 /proc/modules | tr '\n' ' ')"

# A sockpuppet whose stdin and stdout are fifos, opened on fds $2 (commands) and $3 (replies).
puppet() {
    mkfifo "/tmp/$1.in" "/tmp/$1.out"
    sockpuppet < "/tmp/$1.in" > "/tmp/$1.out" &
    eval "${1}_pid=$!"
    eval "exec $2>/tmp/$1.in $3</tmp/$1.out"
}
server() { echo "$*" >&5; read -r R <&6; }
client() { echo "$*" >&7; read -r R <&8; }
close_puppets() {
    exec 5>&- 6<&- 7>&- 8<&-
    wait "$server_pid" "$client_pid" 2>/dev/null
    rm -f /tmp/server.* /tmp/client.*
}

# Waits (up to 60 s: software emulation is slow) until leaktrace's -v log says the accept probe
# is attached, the last it attaches.
attached() {
    for _ in $(seq 600); do
        grep -q "probe sys_exit_accept4 attached" "$1" && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# One connection over loopback, the client closing first, traced by `leaktrace events` with
# --state-hook $1: its events, its log, the puppets' pids.
lifecycle() {
    hook=$1 port=$2
    leaktrace events -v --port "$port" --state-hook "$hook" > "/tmp/events-$hook" 2> "/tmp/log-$hook" &
    lt=$!
    if attached "/tmp/log-$hook" "$lt"; then
        puppet server 5 6
        puppet client 7 8
        server listen 127.0.0.1 "$port"; listener=$(echo "$R" | cut -d' ' -f2)
        client connect 127.0.0.1 "$port"; client_fd=${R#fd }
        server accept "$listener"; server_fd=${R#fd }
        client close "$client_fd"
        sleep 0.5
        server close "$server_fd"
        sleep 0.5
        value "pids-$hook" "server $server_pid client $client_pid"
        close_puppets
    fi
    kill -TERM "$lt" 2>/dev/null
    wait "$lt"
    value "status-$hook" "$?"
    emit "events-$hook" "/tmp/events-$hook"
    emit "log-$hook" "/tmp/log-$hook"
}

# A client opening $1 connections a few per second and holding them, the server holding what it
# accepted, under the live view's JSON report.
leak() {
    count=$1 port=$2
    puppet server 5 6
    puppet client 7 8
    server listen 127.0.0.1 "$port"; listener=$(echo "$R" | cut -d' ' -f2)
    leaktrace -v --format json --duration 12 --pid "$server_pid" --pid "$client_pid" > /tmp/report 2> /tmp/log-leak &
    lt=$!
    if attached /tmp/log-leak "$lt"; then
        for _ in $(seq "$count"); do
            client connect 127.0.0.1 "$port"
            server accept "$listener"
            sleep 0.4
        done
    fi
    wait "$lt"
    value status-leak "$?"
    value pids-leak "server $server_pid client $client_pid"
    close_puppets
    emit report /tmp/report
    emit log-leak /tmp/log-leak
}

lifecycle auto 7001
lifecycle classic 7002
leak 12 7003
value done ok
poweroff -f
