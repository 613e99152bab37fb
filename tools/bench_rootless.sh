# tools/bench_rootless.sh — sourced by tools/bench-start and tools/bench-net for --rootless USER:
# a private dir of an ordinary user, and commands run as that user. Owns nothing else.
#
# rl_setup USER DIR STRATA makes DIR (0700, the user's) with a private XDG_RUNTIME_DIR
# (DIR/run) and a copy of the strata binary (DIR/bin/strata: the checkout may not be
# reachable by the user), and sets RL_USER RL_UID RL_GID RL_DIR AS_USER RL_STRATA.
# `as_user CMD…` runs CMD from DIR as
#   setpriv --reuid --regid --init-groups --inh-caps=-all -- env -i HOME=DIR XDG_RUNTIME_DIR=DIR/run …
# like the test kit's rootless sessions (fuse-tests/kit/src/rootless.rs). $AS_USER is that
# prefix as one string for the tools' command tables (its words hold no spaces). The wrapper's
# two execs (a few ms) are in every rootless sample, strata's and podman's alike.
# rl_cleanup ends rootless podman's pause process of DIR (by the pid in its pause.pid, only
# if it is the user's and its HOME is DIR) and removes DIR; the tools call it on EXIT.

RL_USER="" RL_DIR="" RL_RUNROOT=""

rl_die() { echo "${RL_TOOL:-tools}: $*" >&2; exit 1; }

rl_setup() {  # USER DIR STRATA
    RL_USER=$1
    RL_UID=$(id -u "$RL_USER" 2>/dev/null) ||
        rl_die "no user $RL_USER (make one: useradd -m $RL_USER; useradd gives it ranges in /etc/subuid and /etc/subgid)"
    RL_GID=$(id -g "$RL_USER")
    [[ $RL_UID != 0 ]] || rl_die "--rootless needs an ordinary user, not root"
    local f dev
    for f in /etc/subuid /etc/subgid; do
        grep -q "^$RL_USER:" "$f" 2>/dev/null ||
            echo "${RL_TOOL:-tools}: warning: $RL_USER has no range in $f (strata maps the user alone; podman may refuse)" >&2
    done
    RL_DIR=$2
    rl_cleanup   # a killed run's leftovers
    mkdir -p "$RL_DIR/run" "$RL_DIR/bin"
    cp "$3" "$RL_DIR/bin/strata"
    chown -R "$RL_UID:$RL_GID" "$RL_DIR"
    chmod 0700 "$RL_DIR" "$RL_DIR/run"
    chmod 0755 "$RL_DIR/bin/strata"
    AS_USER="setpriv --reuid=$RL_UID --regid=$RL_GID --init-groups --inh-caps=-all -- env -i HOME=$RL_DIR XDG_RUNTIME_DIR=$RL_DIR/run PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin USER=$RL_USER LC_ALL=C RUST_LOG=strata=warn"
    RL_STRATA="$RL_DIR/bin/strata --root $RL_DIR/strata-root"
    for dev in /dev/fuse /dev/net/tun; do
        as_user test -r $dev -a -w $dev ||
            rl_die "$RL_USER cannot open $dev (chmod 0666 $dev, the mode desktop distributions ship)"
    done
}

# A file of root's made readable by the user: a copy in DIR owned by the user.
rl_give() {  # SRC NAME -> prints DIR/NAME
    cp -r "$1" "$RL_DIR/$2"
    chown -R "$RL_UID:$RL_GID" "$RL_DIR/$2"
    echo "$RL_DIR/$2"
}

# podman's --runroot: DIR/prun, or a private dir in /tmp when that path is over podman's
# limit of 50 characters.
rl_runroot() {
    RL_RUNROOT=$RL_DIR/prun
    ((${#RL_RUNROOT} <= 50)) || RL_RUNROOT=$(mktemp -d /tmp/strata-bench-prun.XXXXXX)
    mkdir -p "$RL_RUNROOT"
    chown "$RL_UID:$RL_GID" "$RL_RUNROOT"
    chmod 0700 "$RL_RUNROOT"
}

as_user() {
    # word splitting of $AS_USER is meant
    # shellcheck disable=SC2086
    (cd "$RL_DIR" && $AS_USER "$@")
}

rl_cleanup() {
    [[ -n $RL_DIR ]] || return 0
    local pid
    pid=$(cat "$RL_DIR/run/libpod/tmp/pause.pid" 2>/dev/null || true)
    if [[ $pid =~ ^[0-9]+$ ]] && [[ $(stat -c %U "/proc/$pid" 2>/dev/null) == "$RL_USER" ]] &&
       tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx "HOME=$RL_DIR"; then
        kill "$pid" 2>/dev/null || true
    fi
    # a daemon of the user's that saw its mount go may still write its last file: retry a little
    local i
    for ((i = 0; i < 50; i++)); do rm -rf "$RL_DIR" 2>/dev/null && break; sleep 0.1; done
    [[ ! -e $RL_DIR ]] || echo "${RL_TOOL:-tools}: warning: could not remove $RL_DIR" >&2
    if [[ -n $RL_RUNROOT && $RL_RUNROOT != "$RL_DIR"/* ]]; then rm -rf "$RL_RUNROOT"; fi
    return 0
}
