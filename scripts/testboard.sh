#!/usr/bin/env bash
# Test boards that fdq-deploy and fdq-profile reach over real SSH, on this machine:
#
#   sudo scripts/testboard.sh up native|arm64 [--name NAME] [--hosts N] [--python PATH] [--bare]
#   sudo scripts/testboard.sh down NAME|all
#   sudo scripts/testboard.sh pids NAME [HOST]      (listener first, then its connections)
#   sudo scripts/testboard.sh build arm64           (only build or find the cached root; its path)
#
# `up` prints, as its last line, the path of a profile YAML that `--target` takes; with --hosts N it
# starts N boards (one port each) and the profile lists them all under `hosts:`. Every board is a
# private OpenSSH sshd (its own config, client key, a free port on 127.0.0.1, UsePAM no, internal
# sftp) started in a private mount namespace: `down` ends every process in that namespace by pid
# (live connections too, which outlive the listener), and the mounts inside end with it.
#   native: the board is this machine; its Python is PATH (default: the repository's .venv; with
#           --bare /usr/bin/python3, as it comes: fdq-deploy --setup).
#   arm64:  an emulated Raspberry Pi 4. The root from make_board_root.sh, built once and cached as
#           $FDQ_BOARD_CACHE/board-arm64-KEY.tar.zst (default /var/cache/fdq: machine-wide, so CI
#           and every later run on this machine reuse it; KEY follows make_board_root.sh), is
#           unpacked under /var/lib/fdq-testboard/NAME and served with ChrootDirectory, /proc, /sys
#           and /dev mounted inside; every process there runs as a Cortex-A72 (QEMU_CPU, set by
#           sshd's SetEnv and passed on through binfmt). Its Python is /opt/fdq/bin/python;
#           --bare removes /opt/fdq, leaving the stock python3 of a fresh Pi (fdq-deploy --setup).
#           /opt/fdq-count/run PROGRAM runs it under a qemu that counts instructions (the profile's
#           instruction_counter, for fdq-profile --count-instructions; scripts/qemu_count).
# Each host's SFTP starts in a folder of its own (~ of the profile's `workdir: ~/fdq`), so the
# hosts of one fleet never share a work directory. `up` is idempotent: on a board that is up it
# restarts any stopped host on its old port and prints the same profile.
set -euo pipefail
PROG=testboard.sh
SCRIPTS="$(cd "$(dirname "$0")" && pwd)"
REPO="$(dirname "$SCRIPTS")"
STATE=/run/fdq-testboard            # per board: configs, keys, pids, the profile (small)
ROOTS=/var/lib/fdq-testboard        # unpacked arm64 roots (a chroot needs a root-owned path), the host key
CACHE="${FDQ_BOARD_CACHE:-/var/cache/fdq}"
SSHD=/usr/sbin/sshd
# shellcheck source=qemu_count/install.sh
. "$SCRIPTS/qemu_count/install.sh"
A72=cortex-a72
USAGE="usage: testboard.sh up native|arm64 [--name NAME] [--hosts N] [--python PATH] [--bare] | down NAME|all | pids NAME [HOST] | build arm64"

die() { echo "$PROG: error: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (sshd, chroot, mount namespaces): run it with sudo"
[ -x "$SSHD" ] || die "OpenSSH's sshd is missing (Debian: apt-get install openssh-server)"

free_port() { /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

lock() { mkdir -p "$STATE"; exec 9>"$STATE/.lock-$1"; flock 9; }  # one board at a time, others go on

# Every pid whose mount namespace is one of a host's (its file `mntns`, one line per start).
ns_pids() {
  local host="$1" own pid ns
  own="$(readlink /proc/self/ns/mnt)"
  [ -f "$host/mntns" ] || return 0
  for pid in /proc/[0-9]*; do
    ns="$(readlink "$pid/ns/mnt" 2>/dev/null)" || continue
    [ "$ns" != "$own" ] && grep -qxF "$ns" "$host/mntns" && echo "${pid#/proc/}"
  done
  return 0
}

listener() {  # the host's sshd pid, when it runs in the host's namespace
  local host="$1" pid
  pid="$(cat "$host/sshd.pid" 2>/dev/null)" || return 1
  [ -n "$pid" ] && [ -d "/proc/$pid" ] && grep -qxF "$(readlink "/proc/$pid/ns/mnt" 2>/dev/null)" "$host/mntns" \
    && echo "$pid"
}

start_host() {  # host folder, kind, root (arm64): start its sshd, wait until it answers
  local host="$1" kind="$2" root="$3" pid ns i
  rm -f "$host/sshd.pid"
  mkdir -p /run/sshd  # sshd's privilege separation directory
  if [ "$kind" = arm64 ]; then
    unshare --mount --propagation private -- sh -c 'mount -t proc proc "$1/proc" && mount -t sysfs sysfs "$1/sys" \
      && mount --bind /dev "$1/dev" && exec "$2" -f "$3" -E "$4"' sh "$root" "$SSHD" "$host/sshd_config" "$host/sshd.log" \
      || die "sshd of $host did not start: $(tail -n 1 "$host/sshd.log" 2>/dev/null)"
  else
    unshare --mount --propagation private -- "$SSHD" -f "$host/sshd_config" -E "$host/sshd.log" \
      || die "sshd of $host did not start: $(tail -n 1 "$host/sshd.log" 2>/dev/null)"
  fi
  for i in $(seq 100); do
    pid="$(cat "$host/sshd.pid" 2>/dev/null)" && [ -n "$pid" ] && break
    sleep 0.1
  done
  [ -n "${pid:-}" ] || die "sshd of $host wrote no pid file: $(tail -n 1 "$host/sshd.log" 2>/dev/null)"
  ns="$(readlink "/proc/$pid/ns/mnt")"
  [ "$ns" != "$(readlink /proc/self/ns/mnt)" ] || die "sshd of $host is not in a private mount namespace"
  echo "$ns" >> "$host/mntns"
}

ssh_board() {  # profile dir, host folder, command...: run a command on a host with the board's keys
  local dir="$1" host="$2"; shift 2
  ssh -q -i "$dir/client_key" -p "$(cat "$host/port")" -o BatchMode=yes -o StrictHostKeyChecking=yes \
    -o UserKnownHostsFile="$dir/known_hosts" -o ConnectTimeout=15 root@127.0.0.1 "$@"
}

write_config() {  # host folder, kind, root, port, start directory (as the session sees it)
  local host="$1" kind="$2" root="$3" port="$4" start="$5" dir
  dir="$(dirname "$host")"
  {
    echo "# written by testboard.sh: one board of $(basename "$dir"), on loopback only"
    echo "ListenAddress 127.0.0.1:$port"
    echo "AddressFamily inet"
    echo "HostKey $ROOTS/host_key"
    echo "AuthorizedKeysFile $dir/authorized_keys"
    echo "PidFile $host/sshd.pid"
    echo "AllowUsers root"
    echo "PermitRootLogin prohibit-password"
    echo "PasswordAuthentication no"
    echo "KbdInteractiveAuthentication no"
    echo "UsePAM no"
    echo "UseDNS no"
    echo "StrictModes no"
    echo "Subsystem sftp internal-sftp -d $start"
    if [ "$kind" = arm64 ]; then
      echo "ChrootDirectory $root"
      echo "SetEnv QEMU_CPU=$A72"
    fi
  } > "$host/sshd_config"
  echo "$port" > "$host/port"
}

arm64_tarball() {  # the cached root, built once (make_board_root.sh) under a lock
  local key tarball build
  key="$(sha256sum "$SCRIPTS/make_board_root.sh" | cut -c1-12)"
  tarball="$CACHE/board-arm64-$key.tar.zst"
  mkdir -p "$CACHE"
  (
    flock 8
    if [ ! -f "$tarball" ]; then
      build="$(mktemp -d "$CACHE/build.XXXXXX")"
      trap 'rm -rf --one-file-system "$build"' EXIT
      echo "$PROG: building the arm64 root once (make_board_root.sh, about 6 min), cached as $tarball" >&2
      "$SCRIPTS/make_board_root.sh" "$build/root" >&2
      tar -I 'zstd -T0' --numeric-owner -cpf "$build/root.tar.zst" -C "$build/root" .
      mv "$build/root.tar.zst" "$tarball"
    fi
  ) 8>"$CACHE/.lock"
  echo "$tarball"
}

write_profile() {  # dir, kind, hosts, python
  local dir="$1" kind="$2" hosts="$3" python="$4" name i first
  name="$(basename "$dir")"
  first="$(cat "$dir/host1/port")"
  {
    echo "# written by scripts/testboard.sh up $kind; removed by: scripts/testboard.sh down $name"
    echo "name: $name"
    if [ "$kind" = arm64 ]; then
      echo "description: emulated Raspberry Pi 4 (arm64 root under qemu-user as a $A72)"
      echo "engine: qnnpack"
      echo "threads: 1"
      echo "instruction_counter: $COUNTER_DIR/run   # fdq-profile --count-instructions"
    else
      echo "description: this machine behind its own sshd"
      echo "engine: x86"
      echo "threads: 1"
    fi
    echo "runtimes: [$(cat "$dir/runtimes")]"
    echo "transport: ssh"
    echo "host: 127.0.0.1"
    echo "port: $first"
    echo "user: root"
    echo "key: $dir/client_key"
    echo "python: $python"
    echo "workdir: ~/fdq"
    if [ "$hosts" -gt 1 ]; then
      echo "hosts:"
      for i in $(seq "$hosts"); do echo "  - {host: 127.0.0.1, port: $(cat "$dir/host$i/port"), user: root}"; done
    fi
  } > "$dir/profile.yaml.part"
  mv "$dir/profile.yaml.part" "$dir/profile.yaml"
}

# The runtimes a Python can import (the runner needs numpy, OpenCV, PyYAML and psutil besides).
RUNTIMES_PY='import importlib.util as u
print(", ".join(r for r, m in (("torchscript", "torch"), ("onnxruntime", "onnxruntime"), ("ncnn", "ncnn"))
                if u.find_spec(m)))'

cmd_up() {
  local kind="${1:-}" name="" hosts=1 python="" bare="" dir root i host port start pid
  [ "$kind" = native ] || [ "$kind" = arm64 ] || die "up takes native or arm64 (see --help)"
  shift
  while [ $# -gt 0 ]; do
    case "$1" in
      --name) name="${2:?}"; shift 2 ;;
      --hosts) hosts="${2:?}"; shift 2 ;;
      --python) python="${2:?}"; shift 2 ;;
      --bare) bare=1; shift ;;
      *) die "unknown option $1 (see --help)" ;;
    esac
  done
  name="${name:-$kind}"
  [[ "$name" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] && [ "$name" != all ] || die "--name takes letters, digits, _ . - (not 'all')"
  [[ "$hosts" =~ ^[0-9]+$ ]] && [ "$hosts" -ge 1 ] && [ "$hosts" -le 32 ] || die "--hosts takes 1 to 32 (see --help)"
  [ -z "$bare" ] || [ -z "$python" ] || die "--bare takes the system's python3, not --python (see --help)"
  [ -z "$python" ] || [ "$kind" = native ] || die "--python is for native boards; arm64 has /opt/fdq/bin/python (see --help)"
  dir="$STATE/$name"
  root="$ROOTS/$name/root"
  lock "$name"
  if [ -f "$dir/profile.yaml" ]; then
    [ "$(cat "$dir/kind")" = "$kind${bare:+ --bare}" ] && [ "$(cat "$dir/hosts")" = "$hosts" ] \
      || die "board $name is up as $(cat "$dir/kind") with $(cat "$dir/hosts") host(s); run: testboard.sh down $name"
    for i in $(seq "$hosts"); do
      listener "$dir/host$i" >/dev/null || start_host "$dir/host$i" "$kind" "$root"
    done
    echo "$dir/profile.yaml"
    return 0
  fi
  if [ -e "$dir" ] || [ -e "$ROOTS/$name" ]; then down_board "$name" >/dev/null; fi  # an up cut short
  # The profile is written last: an up that fails or is interrupted takes down what it started.
  trap "[ -f '$dir/profile.yaml' ] || down_board '$name' >/dev/null 2>&1" EXIT  # (a checked name: no quotes)
  trap 'exit 130' INT TERM
  if [ "$kind" = native ]; then
    if [ -n "$bare" ]; then python=/usr/bin/python3; else python="${python:-$REPO/.venv/bin/python}"; fi
    [ -x "$python" ] || die "no Python at $python: make the venv (scripts/test.sh) or give --python"
    [ -n "$bare" ] || "$python" -c 'import numpy, cv2, yaml, psutil' 2>/dev/null \
      || die "$python lacks the runner's packages (numpy, opencv-python-headless, pyyaml, psutil): give --python one that has them"
  else
    # shellcheck source=board_binfmt.sh
    . "$SCRIPTS/board_binfmt.sh"
    ensure_arm64_binfmt
    local tarball
    tarball="$(arm64_tarball)"
    mkdir -p "$ROOTS/$name"
    rm -rf --one-file-system "$root.partial"
    mkdir "$root.partial"
    tar --zstd --numeric-owner -xpf "$tarball" -C "$root.partial"
    if [ -n "$bare" ]; then rm -rf "$root.partial/opt/fdq"; python=/usr/bin/python3; else python=/opt/fdq/bin/python; fi
    install_counter "$root.partial" "$CACHE" "$A72"
    mv "$root.partial" "$root"
  fi
  mkdir -p "$dir"
  chmod 755 "$STATE" "$dir"
  echo "$kind${bare:+ --bare}" > "$dir/kind"
  echo "$hosts" > "$dir/hosts"
  [ -f "$ROOTS/host_key" ] || { mkdir -p "$ROOTS" && ssh-keygen -q -t ed25519 -N "" -C fdq-testboard -f "$ROOTS/host_key"; }
  ssh-keygen -q -t ed25519 -N "" -C "fdq-testboard-$name" -f "$dir/client_key"
  cp "$dir/client_key.pub" "$dir/authorized_keys"
  for i in $(seq "$hosts"); do
    host="$dir/host$i"
    mkdir -p "$host"
    if [ "$kind" = arm64 ]; then start="/root/host$i"; mkdir -p "$root$start"; else start="$host/home"; mkdir -p "$start"; fi
    port="$(free_port)"
    write_config "$host" "$kind" "$root" "$port" "$start"
    echo "[127.0.0.1]:$port $(cut -d' ' -f1,2 "$ROOTS/host_key.pub")" >> "$dir/known_hosts"
    start_host "$host" "$kind" "$root"
  done
  # Ready: the board's own Python answers over SSH (under emulation on arm64) with its runtimes.
  for i in $(seq "$hosts"); do
    ssh_board "$dir" "$dir/host$i" "$python" -c "'$RUNTIMES_PY'" > "$dir/runtimes" \
      || die "board $name host $i: $python does not run over SSH (see $dir/host$i/sshd.log)"
  done
  write_profile "$dir" "$kind" "$hosts" "$python"
  echo "$dir/profile.yaml"
}

down_board() {
  local name="$1" dir="$STATE/$1" host pid pids i
  if [ ! -d "$dir" ] && [ ! -d "$ROOTS/$name" ]; then echo "$PROG: $name is not up"; return 0; fi
  for host in "$dir"/host[0-9]*; do
    [ -d "$host" ] || continue
    pid="$(listener "$host")" && kill -TERM "$pid" 2>/dev/null || true  # first: no new connections
    for i in $(seq 50); do
      pids="$(ns_pids "$host")"
      [ -n "$pids" ] || break
      # shellcheck disable=SC2086
      if [ "$i" -lt 30 ]; then kill -TERM $pids 2>/dev/null || true; else kill -KILL $pids 2>/dev/null || true; fi
      sleep 0.1
    done
    [ -z "$(ns_pids "$host")" ] || die "board $name: processes of $host did not end: $(ns_pids "$host" | tr '\n' ' ')"
  done
  # Mounts live in the boards' namespaces, gone with their last process; none may remain here.
  if grep -qF " $ROOTS/$name/" /proc/self/mounts; then
    die "board $name: something is still mounted under $ROOTS/$name (see /proc/self/mounts)"
  fi
  rm -rf --one-file-system "$ROOTS/$name" "$dir"
  echo "$PROG: $name down"
}

cmd_down() {
  local what="${1:-}" name
  [ -n "$what" ] || die "down takes a board name or all (see --help)"
  if [ "$what" = all ]; then
    for name in $( (ls "$STATE" 2>/dev/null; ls "$ROOTS" 2>/dev/null) | grep -v '^host_key' | sort -u); do
      (lock "$name"; down_board "$name")
    done
  else
    lock "$what"
    down_board "$what"
  fi
}

cmd_pids() {
  local dir="$STATE/${1:?usage: pids NAME [HOST]}" host pid
  [ -d "$dir" ] || die "board $1 is not up"
  for host in "$dir"/host${2:-[0-9]*}; do
    [ -d "$host" ] || die "board $1 has no host ${2:-}"
    pid="$(listener "$host")" && echo "$pid" || true
    ns_pids "$host" | grep -vxF "${pid:-none}" || true
  done
}

main() {
  case "${1:-}" in
    up) shift; cmd_up "$@" ;;
    down) shift; cmd_down "$@" ;;
    pids) shift; cmd_pids "$@" ;;
    build) [ "${2:-}" = arm64 ] || die "build takes arm64 (see --help)"; . "$SCRIPTS/board_binfmt.sh"; ensure_arm64_binfmt
           arm64_tarball ;;
    -h|--help) echo "$USAGE" ;;
    *) die "$USAGE" ;;
  esac
}

main "$@"; exit  # one line, read whole: an edit of this file cannot reach a run in progress
