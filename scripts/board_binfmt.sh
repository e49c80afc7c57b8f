# Sourced by make_board_root.sh and testboard.sh: on a host that is not aarch64, make the kernel
# run aarch64 binaries through qemu-user-static (binfmt_misc), installing it when it is missing.
# The handler is registered with fix_binary, so it also works inside a chroot that has no qemu.
# It is machine-wide state shared with every other emulated board: never undone here.
ensure_arm64_binfmt() {
  [ "$(uname -m)" = aarch64 ] && return 0
  if ! command -v debootstrap >/dev/null || [ ! -e /usr/bin/qemu-aarch64-static ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static binfmt-support debootstrap >/dev/null
  fi
  [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64
}
