/*
 * insn_count: a QEMU TCG plugin (plugin API version 1, qemu-user 7.2) that counts the guest
 * instructions a process executes and writes the running count when the guest asks for it.
 *
 * Debian's qemu-user ships no qemu-plugin.h, so the few declarations used are written out below,
 * as QEMU's include/qemu/qemu-plugin.h (7.2) has them.
 *
 * Counting: every translated block adds its instruction count to one counter inline (no helper
 * call), so the count costs little time. The counters are shared by the guest's threads and not
 * atomic: count with every runtime at one thread.
 *
 * Classes: when a block is translated, each of its A64 instructions is decoded into one class of
 * CLASS_NAMES (what a Cortex-A72 issues it to, as fdq.host.estimate weighs them), and the block adds
 * its per-class numbers to per-class counters inline too (one add per class present in the block).
 *
 * Markers: the guest makes the syscall MARK_SYSCALL with MARK_MAGIC as its first argument (an
 * unused number: the kernel and qemu answer -ENOSYS, nothing else happens) and two numbers of its
 * own; the plugin appends the line "A2 A3 COUNT NAME=COUNT ..." (the total, then each class) to the
 * file named by its argument out=PATH. Readers of the older "A2 A3 COUNT" lines read these too.
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
struct qemu_plugin_insn;
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
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *insn);
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *insn);
void qemu_plugin_register_vcpu_syscall_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_syscall_cb_t cb);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
void qemu_plugin_outs(const char *string);

QEMU_PLUGIN_EXPORT int qemu_plugin_version = 1;

/* The marker: fdq.device.instructions makes the same call (keep the two in step). */
#define MARK_SYSCALL 0x7f0
#define MARK_MAGIC 0x66647121u  /* "fdq!" */

/* The classes, in the order of the marker line (fdq.device.instructions reads the names). */
enum insn_class {
    SIMD_IMUL,    /* ASIMD integer multiply(-accumulate), D-form or long (smull/smlal/sdot...): F0 */
    SIMD_IMUL_Q,  /* ASIMD integer mul/mla/mls/sqdmulh, Q-form, not long: F0, two cycles */
    SIMD_FMUL,    /* FP multiply(-add), scalar or ASIMD D-form (fmadd, fmul d/s, fmla .2s) */
    SIMD_FMUL_Q,  /* ASIMD FP multiply(-add), Q-form (fmla .4s, fmul .4s) */
    SIMD_F1,      /* ASIMD shifts and pairwise add-accumulate long (sshr, sadalp...): F1 only */
    SIMD_OTHER,   /* every other ASIMD and FP data-processing instruction */
    LOAD,         /* every load, integer or SIMD, incl. load-acquire, literal and atomics */
    STORE,
    BRANCH,       /* branches, calls, returns, compare/test and branch */
    SCALAR,       /* scalar integer data processing and system instructions */
    N_CLASSES
};
static const char *const CLASS_NAMES[N_CLASSES] = {
    "simd_imul", "simd_imul_q", "simd_fmul", "simd_fmul_q", "simd_f1", "simd_other",
    "load", "store", "branch", "scalar",
};

static uint64_t executed;
static uint64_t by_class[N_CLASSES];
static int out_fd = -1;

static int bit(uint32_t insn, int n) { return (insn >> n) & 1; }
static uint32_t bits(uint32_t insn, int hi, int lo) { return (insn >> lo) & ((1u << (hi - lo + 1)) - 1); }

/* ASIMD and FP data processing (op0 = x111), after the Arm ARM's A64 encoding index. */
static enum insn_class simd_class(uint32_t insn)
{
    int q = bit(insn, 30), u = bit(insn, 29);
    uint32_t op;

    if ((insn & 0x9F000400u) == 0x0F000000u || (insn & 0xDF000400u) == 0x5F000000u) {
        /* vector or scalar x indexed element: all are multiplies */
        op = bits(insn, 15, 12);
        if (op == 0x1 || op == 0x5 || op == 0x9)             /* fmla, fmls, fmul(x) */
            return q && !bit(insn, 28) ? SIMD_FMUL_Q : SIMD_FMUL;
        if (op == 0x2 || op == 0x3 || op == 0x6 || op == 0x7 || op == 0xA || op == 0xB || op == 0xE)
            return SIMD_IMUL;                                /* long forms and sdot/udot */
        if (op == 0x0 && !u)                                 /* fmlal (fp16) */
            return SIMD_FMUL;
        return q && !bit(insn, 28) ? SIMD_IMUL_Q : SIMD_IMUL; /* mul, mla, mls, sqdmulh... */
    }
    if ((insn & 0x9F200400u) == 0x0E200400u) {              /* vector three same */
        op = bits(insn, 15, 11);
        if (op == 0x12 || op == 0x13 || op == 0x16)          /* mla/mls, mul/pmul, sq(r)dmulh */
            return q ? SIMD_IMUL_Q : SIMD_IMUL;
        if ((op == 0x19 && !u) || op == 0x1B)                /* fmla/fmls, fmul/fmulx */
            return q ? SIMD_FMUL_Q : SIMD_FMUL;
        if (op == 0x08 || op == 0x09 || op == 0x0A || op == 0x0B || op == 0x0F)
            return SIMD_F1;                                  /* sshl, sqshl, srshl, sqrshl, sabd/uaba */
        return SIMD_OTHER;
    }
    if ((insn & 0x9F20FC00u) == 0x0E009400u)                 /* sdot, udot (three same extra) */
        return SIMD_IMUL;
    if ((insn & 0x9F200C00u) == 0x0E200000u) {              /* vector three different */
        op = bits(insn, 15, 12);
        if (op >= 0x8 && op <= 0xE)                          /* smlal, smlsl, smull, sqdm*, pmull */
            return SIMD_IMUL;
        return op == 0x5 ? SIMD_F1 : SIMD_OTHER;             /* sabal */
    }
    if ((insn & 0x9F3E0C00u) == 0x0E200800u && bits(insn, 16, 12) == 0x06)
        return SIMD_F1;                                      /* sadalp, uadalp */
    if ((insn & 0x9F800400u) == 0x0F000400u && bits(insn, 22, 19) != 0)
        return SIMD_F1;                                      /* shift by immediate */
    if ((insn & 0x5F000000u) == 0x1F000000u)                 /* fmadd, fmsub, fnmadd, fnmsub */
        return SIMD_FMUL;
    if ((insn & 0x5F200C00u) == 0x1E200800u && (bits(insn, 15, 12) == 0x0 || bits(insn, 15, 12) == 0x8))
        return SIMD_FMUL;                                    /* scalar fmul, fnmul */
    return SIMD_OTHER;
}

static enum insn_class classify(uint32_t insn)
{
    if ((insn & 0x0A000000u) == 0x08000000u) {              /* loads and stores (op0 = x1x0) */
        if ((insn & 0x3B000000u) == 0x18000000u)             /* load literal */
            return LOAD;
        if (bits(insn, 29, 28) == 3 && !bit(insn, 26)) {     /* integer register forms: opc 00 stores */
            if (!bit(insn, 24) && bit(insn, 21) && bits(insn, 11, 10) == 0)
                return LOAD;                                 /* atomics (ldadd, swp...) load */
            return bits(insn, 23, 22) == 0 ? STORE : LOAD;
        }
        return bit(insn, 22) ? LOAD : STORE;                 /* pairs, exclusives, SIMD forms: the L bit */
    }
    if ((insn & 0x0E000000u) == 0x0E000000u)                 /* op0 = x111 */
        return simd_class(insn);
    if ((insn & 0x1C000000u) == 0x14000000u) {              /* branches, exceptions, system */
        if ((insn & 0xFF000000u) == 0xD4000000u || (insn & 0xFFC00000u) == 0xD5000000u)
            return SCALAR;                                   /* svc..., hints, barriers, mrs/msr */
        return BRANCH;
    }
    return SCALAR;
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    uint64_t counts[N_CLASSES] = {0};
    size_t n = qemu_plugin_tb_n_insns(tb), i;
    uint32_t insn;
    int c;

    for (i = 0; i < n; i++) {
        struct qemu_plugin_insn *in = qemu_plugin_tb_get_insn(tb, i);
        insn = 0;
        memcpy(&insn, qemu_plugin_insn_data(in), qemu_plugin_insn_size(in) < 4 ? qemu_plugin_insn_size(in) : 4);
        counts[classify(insn)]++;
    }
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &executed, n);
    for (c = 0; c < N_CLASSES; c++)
        if (counts[c])
            qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &by_class[c], counts[c]);
}

static void syscall_cb(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num, uint64_t a1, uint64_t a2,
                       uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8)
{
    char line[512];
    int n, c;

    if (num != MARK_SYSCALL || a1 != MARK_MAGIC)
        return;
    n = snprintf(line, sizeof line, "%" PRIu64 " %" PRIu64 " %" PRIu64, a2, a3, executed);
    for (c = 0; c < N_CLASSES; c++)
        n += snprintf(line + n, sizeof line - (size_t)n, " %s=%" PRIu64, CLASS_NAMES[c], by_class[c]);
    n += snprintf(line + n, sizeof line - (size_t)n, "\n");
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
