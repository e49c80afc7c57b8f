/*
 * insn_count: a QEMU TCG plugin (plugin API version 1, qemu-user 7.2) that counts the guest
 * instructions a process executes and writes the running count when the guest asks for it.
 *
 * Debian's qemu-user ships no qemu-plugin.h, so the few declarations used are written out below,
 * as QEMU's include/qemu/qemu-plugin.h (7.2) has them.
 *
 * Counting: every translated block adds its instruction count to one counter inline (no helper
 * call), so the count costs little time. The counter is shared by the guest's threads and not
 * atomic: count with every runtime at one thread.
 *
 * Markers: the guest makes the syscall MARK_SYSCALL with MARK_MAGIC as its first argument (an
 * unused number: the kernel and qemu answer -ENOSYS, nothing else happens) and two numbers of its
 * own; the plugin appends the line "A2 A3 COUNT" to the file named by its argument out=PATH.
 *
 *   qemu-aarch64 -plugin insn_count.so,out=/tmp/counts.txt PROGRAM ...
 */
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define QEMU_PLUGIN_EXPORT __attribute__((visibility("default")))

typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t;  /* only passed through */
struct qemu_plugin_tb;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_vcpu_syscall_cb_t)(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num,
                                              uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4,
                                              uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op, void *ptr,
                                              uint64_t imm);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
void qemu_plugin_register_vcpu_syscall_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_syscall_cb_t cb);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
void qemu_plugin_outs(const char *string);

QEMU_PLUGIN_EXPORT int qemu_plugin_version = 1;

/* The marker: fdq.device.instructions makes the same call (keep the two in step). */
#define MARK_SYSCALL 0x7f0
#define MARK_MAGIC 0x66647121u  /* "fdq!" */

static uint64_t executed;
static int out_fd = -1;

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &executed,
                                             qemu_plugin_tb_n_insns(tb));
}

static void syscall_cb(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num, uint64_t a1, uint64_t a2,
                       uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8)
{
    char line[96];
    int n;

    if (num != MARK_SYSCALL || a1 != MARK_MAGIC)
        return;
    n = snprintf(line, sizeof line, "%" PRIu64 " %" PRIu64 " %" PRIu64 "\n", a2, a3, executed);
    if (write(out_fd, line, (size_t)n) != n)  /* one write per line: the reader never sees half of one */
        qemu_plugin_outs("insn_count: cannot write a marker line\n");
}

static void at_exit(qemu_plugin_id_t id, void *userdata)
{
    if (out_fd >= 0)
        close(out_fd);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    const char *out = NULL;
    int i;

    for (i = 0; i < argc; i++)
        if (strncmp(argv[i], "out=", 4) == 0)
            out = argv[i] + 4;
    if (!out || !*out) {
        qemu_plugin_outs("insn_count: needs the argument out=PATH\n");
        return -1;
    }
    out_fd = open(out, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (out_fd < 0) {
        qemu_plugin_outs("insn_count: cannot open the out= file\n");
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_vcpu_syscall_cb(id, syscall_cb);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
