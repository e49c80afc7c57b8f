#!/usr/bin/env bash
# Build an arm64 Debian root filesystem with what the device runner needs (python3, gcc for the C
# kernels, and in /opt/fdq a venv with the board's torch, numpy, opencv-python-headless, pyyaml,
# psutil): the base of the emulated board. On an x86 host its programs run through qemu-user
# (binfmt_misc), so `chroot ROOT ...` starts aarch64 binaries; QNNPACK then needs /proc and /sys
# mounted inside (it reads the CPU description there), as scripts/check_board_torch.py --chroot does.
#
#   sudo scripts/make_board_root.sh ROOT [TORCH_VERSION]      (default torch 2.9.1, Debian bookworm)
#
# The wheels are fetched on the host for aarch64 / CPython 3.11 (bookworm's python3), then installed
# inside with --no-index, so pip never resolves anything under emulation. Written to ROOT.partial
# and renamed at the end: an interrupted build leaves no ROOT behind.
set -euo pipefail
ROOT="${1:?usage: make_board_root.sh ROOT [TORCH_VERSION]}"
TORCH="${2:-2.9.1}"
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
if [ "$(id -u)" != 0 ]; then echo "make_board_root.sh: error: needs root (debootstrap, chroot)" >&2; exit 1; fi
if [ -e "$ROOT" ]; then echo "make_board_root.sh: error: $ROOT exists" >&2; exit 1; fi
ROOT="$(cd "$(dirname "$ROOT")" && pwd)/$(basename "$ROOT")"
PARTIAL="$ROOT.partial"
# --one-file-system: never follow a mount debootstrap may have left inside (its /proc) into the host.
cleanup() { umount -R "$PARTIAL/proc" "$PARTIAL/sys" 2>/dev/null || true; rm -rf --one-file-system "$PARTIAL"; }
# Long steps run in their own process group, waited for: a signal reaches the trap at once, and the
# trap stops the whole step (debootstrap's dpkg included) before removing what it wrote.
STEP=
step() { setsid "$@" & STEP=$!; wait "$STEP"; }
stop() { if [ -n "$STEP" ]; then kill -TERM -- "-$STEP" 2>/dev/null || true; wait "$STEP" 2>/dev/null || true; fi; }
cleanup
trap 'cleanup; echo "make_board_root.sh: error: build failed; nothing left behind" >&2' ERR
trap 'stop; cleanup; echo "make_board_root.sh: interrupted; nothing left behind" >&2; exit 130' INT TERM

# shellcheck source=board_binfmt.sh
. "$(dirname "$0")/board_binfmt.sh"
ensure_arm64_binfmt

step debootstrap --arch=arm64 --variant=minbase \
  --include=python3,python3-venv,python3-pip,gcc,libc6-dev,ca-certificates "$SUITE" "$PARTIAL" "$MIRROR" >/dev/null

WHEELS="$PARTIAL/var/cache/fdq-wheels"
mkdir -p "$WHEELS"
ARM=(--platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64
     --python-version 3.11 --only-binary=:all: --no-deps -q -d "$WHEELS")
# --no-deps: pip would judge torch's CUDA-only dependencies by this host's markers.
python3 -m pip download "${ARM[@]}" "torch==$TORCH" numpy opencv-python-headless pyyaml psutil markupsafe
python3 -m pip download --no-deps -q -d "$WHEELS" filelock typing-extensions 'sympy>=1.13.3' 'mpmath<1.4' \
  networkx jinja2 fsspec

step env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot "$PARTIAL" /bin/sh -c \
  "python3 -m venv /opt/fdq && /opt/fdq/bin/pip install -q --no-index --find-links /var/cache/fdq-wheels \
   torch==$TORCH numpy opencv-python-headless pyyaml psutil"
rm -rf "$WHEELS"
trap - ERR INT TERM
mv "$PARTIAL" "$ROOT"
echo "make_board_root.sh: $ROOT (arm64 $SUITE, /opt/fdq/bin/python with torch $TORCH)"
