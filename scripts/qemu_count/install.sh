# Sourced by testboard.sh: put an instruction-counting qemu into an arm64 board's root.
#
# The board's processes run under qemu-aarch64-static through binfmt_misc, which loads no TCG
# plugins. Debian's dynamic /usr/bin/qemu-aarch64 (package qemu-user, same version) does. It is an
# x86-64 program, which runs natively inside the chroot once it has its loader and libraries:
# install_counter copies the three, the plugin (insn_count.c, built once per source hash) and the
# wrapper `run` into ROOT/opt/fdq-count. On the board:
#
#   /opt/fdq-count/run PROGRAM ARGS...
#
# runs PROGRAM as a CPU (default cortex-a72) under the plugin, with FDQ_COUNT_OUT naming the new file
# the plugin appends its marker lines to and FDQ_COUNT_CPU the CPU (fdq.device.instructions reads both).
COUNTER_DIR=/opt/fdq-count

# The plugin for this source, compiled once into CACHE (a compiler error stops here, with gcc's words).
counter_plugin() {  # cache folder
  local src="$(dirname "${BASH_SOURCE[0]}")/insn_count.c" key so
  key="$(sha256sum "$src" | cut -c1-12)"
  so="$1/insn_count-$key.so"
  if [ ! -f "$so" ]; then
    command -v gcc >/dev/null || die "gcc is missing: it builds the instruction-counting plugin (apt-get install gcc)"
    gcc -O2 -shared -fPIC -fvisibility=hidden -Wall -Wextra -Werror -Wno-unused-parameter -o "$so.part" "$src" >&2
    mv "$so.part" "$so"
  fi
  echo "$so"
}

install_counter() {  # root, cache folder, CPU model
  local root="$1" cache="$2" cpu="$3" qemu=/usr/bin/qemu-aarch64 dest lib
  if [ ! -x "$qemu" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user >/dev/null
  fi
  dest="$root$COUNTER_DIR"
  mkdir -p "$dest/lib"
  cp "$qemu" "$dest/qemu-aarch64"
  cp "$(counter_plugin "$cache")" "$dest/insn_count.so"
  # Every library the dynamic qemu needs, and the loader (the board has none for x86-64).
  for lib in $(ldd "$qemu" | grep -o '/[^ ]*'); do cp -L "$lib" "$dest/lib/"; done
  lib="$(ldd "$qemu" | grep -o '/[^ ]*ld-linux[^ ]*')"
  cat > "$dest/run" <<RUN
#!/bin/sh
# written by testboard.sh: PROGRAM ARGS... under qemu-aarch64 as a $cpu, counting instructions
# (scripts/qemu_count/insn_count.c); FDQ_COUNT_OUT is the new file the counts go to.
set -e
FDQ_COUNT_OUT="\$(mktemp /tmp/fdq-count.XXXXXX)"
FDQ_COUNT_CPU=$cpu
export FDQ_COUNT_OUT FDQ_COUNT_CPU
exec $COUNTER_DIR/lib/$(basename "$lib") --library-path $COUNTER_DIR/lib $COUNTER_DIR/qemu-aarch64 -L / \\
  -cpu $cpu -plugin "$COUNTER_DIR/insn_count.so,out=\$FDQ_COUNT_OUT" "\$@"
RUN
  chmod 755 "$dest/run"
}
