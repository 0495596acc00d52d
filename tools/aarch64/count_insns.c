/* A qemu TCG plugin (plugin API v1, qemu 7.2 as Debian ships it) that counts executed AArch64 instructions
 * by class (insn_class.h): total, SMMLA, SDOT, other vector integer and FP multiplies, loads, stores.
 *
 *   gcc -shared -fPIC -O2 -o count_insns.so count_insns.c
 *   qemu-aarch64 -cpu max,sme=off -plugin ./count_insns.so[,arg=out=FILE] PROGRAM ...
 *
 * At exit it writes one line of key=value pairs (to FILE, else through qemu's log): the counts of the whole run,
 * then one line per mark. A mark is the guest's call sched_get_priority_max(MARK_POLICY) (an invalid policy:
 * the call fails and does nothing else), for example os.sched_get_priority_max(28528) from Python: each mark
 * line holds the counts at that moment, so the difference of two marks is what ran between them, without the
 * program's start-up. Counting is inline (one add per executed instruction into a per-class counter): exact
 * for a single-threaded guest; run guests with one thread (OMP_NUM_THREADS=1), since concurrent vCPU threads
 * would race on the counters.
 * Debian ships no qemu-plugin.h, so the few API entry points used are declared here, as in QEMU's
 * include/qemu/qemu-plugin.h (API version 1).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "insn_class.h"

typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
typedef struct qemu_info_t qemu_info_t;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*qemu_plugin_vcpu_syscall_cb_t)(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num,
                                              uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5,
                                              uint64_t a6, uint64_t a7, uint64_t a8);

#define QEMU_PLUGIN_EXPORT __attribute__((visibility("default")))
extern void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
extern size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
extern struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
extern const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *insn);
extern size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *insn);
extern void qemu_plugin_register_vcpu_insn_exec_inline(struct qemu_plugin_insn *insn, enum qemu_plugin_op op,
                                                       void *ptr, uint64_t imm);
extern void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
extern void qemu_plugin_outs(const char *string);
extern void qemu_plugin_register_vcpu_syscall_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_syscall_cb_t cb);

QEMU_PLUGIN_EXPORT int qemu_plugin_version = 1;

#define SYS_SCHED_GET_PRIORITY_MAX 125     /* AArch64 Linux (asm-generic numbering) */
#define MARK_POLICY 28528                  /* 0x6f70, "op" */
#define MAX_MARKS 4096

static uint64_t total;
static uint64_t counts[IC_N];
static uint64_t marks[MAX_MARKS][IC_N];    /* [i][0] holds the total */
static int n_marks;
static char out_path[4096];

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num, uint64_t a1, uint64_t a2,
                       uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8)
{
    (void)id, (void)vcpu_index, (void)a2, (void)a3, (void)a4, (void)a5, (void)a6, (void)a7, (void)a8;
    if (num != SYS_SCHED_GET_PRIORITY_MAX || a1 != MARK_POLICY || n_marks == MAX_MARKS)
        return;
    marks[n_marks][0] = total;
    for (int c = 1; c < IC_N; c++)
        marks[n_marks][c] = counts[c];
    n_marks++;
}

static int format_counts(char *line, size_t size, const uint64_t *tot, const uint64_t *cls)
{
    int len = snprintf(line, size, "total=%llu", (unsigned long long)*tot);
    for (int c = 1; c < IC_N; c++)
        len += snprintf(line + len, size - len, " %s=%llu", insn_class_name[c], (unsigned long long)cls[c]);
    len += snprintf(line + len, size - len, "\n");
    return len;
}

static void on_tb_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, &total, 1);
        if (qemu_plugin_insn_size(insn) != 4)
            continue;
        uint32_t word;
        memcpy(&word, qemu_plugin_insn_data(insn), 4);
        enum insn_class c = classify_insn(word);
        if (c != IC_OTHER)
            qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, &counts[c], 1);
    }
}

static void on_plugin_exit(qemu_plugin_id_t id, void *userdata)
{
    (void)id;
    (void)userdata;
    char line[512];
    FILE *f = out_path[0] ? fopen(out_path, "w") : NULL;
    for (int i = -1; i < n_marks; i++) {
        if (i < 0)
            format_counts(line, sizeof line, &total, counts);
        else
            format_counts(line, sizeof line, &marks[i][0], marks[i]);
        if (f)
            fputs(line, f);
        else
            qemu_plugin_outs(line);
    }
    if (f)
        fclose(f);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    (void)info;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0)
            snprintf(out_path, sizeof out_path, "%s", argv[i] + 4);
        else if (strncmp(argv[i], "arg=out=", 8) == 0)
            snprintf(out_path, sizeof out_path, "%s", argv[i] + 8);
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_tb_translate);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    qemu_plugin_register_atexit_cb(id, on_plugin_exit, NULL);
    return 0;
}
