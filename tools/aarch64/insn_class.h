/* Classes of executed AArch64 instructions that matter for int8 GEMM, decided from the 32-bit encoding alone
 * (qemu's disassembler is not relied on: it may not know SVE or the 8.6 matrix instructions).
 *
 *   SMMLA   int8 matrix multiply-accumulate: NEON SMMLA/UMMLA/USMMLA, SVE SMMLA/UMMLA/USMMLA
 *   SDOT    int8 dot products: NEON SDOT/UDOT/USDOT (vector and by element), SUDOT, SVE SDOT/UDOT/USDOT
 *   VIMUL   other vector integer multiplies: NEON MUL/MLA/MLS, SMULL/UMULL/SMLAL/UMLAL/..., SQDMULH...,
 *           by element; SVE MUL/MLA/MLS/MAD/MSB/SMULH/UMULH
 *   VFMUL   vector floating-point multiplies: NEON FMUL/FMLA/FMLS (vector and by element), SVE FMUL/FMLA/...
 *   LOAD    every load (integer, FP/SIMD, pairs, structures, literal, exclusive/acquire, SVE)
 *   STORE   every store (the same families)
 * Encodings follow the Arm A64 ISA (DDI 0602); tests/test_aarch64_tools.py checks this header against
 * binutils' disassembly of compiled code.
 */
#ifndef OPREGISTRY_INSN_CLASS_H
#define OPREGISTRY_INSN_CLASS_H
#include <stdint.h>

enum insn_class { IC_OTHER = 0, IC_SMMLA, IC_SDOT, IC_VIMUL, IC_VFMUL, IC_LOAD, IC_STORE, IC_N };
static const char *const insn_class_name[IC_N] = {"other", "smmla", "sdot", "vimul", "vfmul", "load", "store"};

static inline int m(uint32_t w, uint32_t mask, uint32_t value) { return (w & mask) == value; }

static inline enum insn_class loadstore_class(uint32_t w)
{
    /* op0 = x1x0: loads and stores */
    if (m(w, 0x3b000000, 0x18000000))                       /* load register (literal), incl. PRFM literal */
        return IC_LOAD;
    if (((w >> 28) & 3) == 3) {                             /* load/store register (all addressing forms) */
        if (m(w, 0x3b200c00, 0x38200000))                    /* atomic memory operations (LSE): read-modify-write */
            return IC_LOAD;
        unsigned v = (w >> 26) & 1, opc = (w >> 22) & 3;
        if (v == 0)
            return opc == 0 ? IC_STORE : IC_LOAD;           /* opc 10/11: signed loads (or PRFM) */
        return (opc & 1) ? IC_LOAD : IC_STORE;              /* SIMD&FP: opc 00/10 store, 01/11 load */
    }
    /* pairs, SIMD structures (multiple/single), exclusive/ordered, no-allocate pairs: L is bit 22 */
    return ((w >> 22) & 1) ? IC_LOAD : IC_STORE;
}

static inline enum insn_class sve_class(uint32_t w)
{
    unsigned top = w >> 29;
    if (top == 4 || top == 5 || top == 6)                   /* SVE loads (gather, contiguous, 64-bit gather; */
        return IC_LOAD;                                     /* SVE prefetches fall here too) */
    if (top == 7)                                           /* SVE stores */
        return IC_STORE;
    if (m(w, 0xff20fc00, 0x45009800))                       /* SMMLA/USMMLA/UMMLA (SVE) */
        return IC_SMMLA;
    if (m(w, 0xff20f800, 0x44000000) || m(w, 0xffa0f800, 0x44a00000) ||   /* SDOT/UDOT (vectors, indexed) */
        m(w, 0xffe0fc00, 0x44807800) || m(w, 0xffe0f800, 0x44a01800))     /* USDOT, USDOT/SUDOT indexed */
        return IC_SDOT;
    if (m(w, 0xff3ce000, 0x04100000) ||                     /* MUL/SMULH/UMULH (predicated) */
        m(w, 0xff20c000, 0x04004000) || m(w, 0xff20c000, 0x0400c000) ||   /* MLA/MLS, MAD/MSB */
        m(w, 0xff20f000, 0x04206000) ||                     /* MUL/SMULH/UMULH/PMUL (unpredicated) */
        m(w, 0xffa0f000, 0x44a0f000) || m(w, 0xffe0f000, 0x44e0f000))      /* MUL (indexed) */
        return IC_VIMUL;
    if (m(w, 0xff200000, 0x65200000) ||                     /* FMLA/FMLS/FNMLA/FNMLS/FMAD/FMSB/FNMAD/FNMSB */
        m(w, 0xff3fe000, 0x65028000) ||                     /* FMUL (predicated, vectors) */
        m(w, 0xff20fc00, 0x65000800) ||                     /* FMUL (unpredicated) */
        m(w, 0xff20f800, 0x64200000) ||                     /* FMLA/FMLS (indexed; size/index in 23:22) */
        m(w, 0xff20fc00, 0x64202000))                       /* FMUL (indexed) */
        return IC_VFMUL;
    return IC_OTHER;
}

static inline enum insn_class simd_class(uint32_t w)
{
    if (m(w, 0x9f208400, 0x0e008400)) {                     /* three same (extra) */
        unsigned opc = (w >> 11) & 0xf;
        if (opc == 4 || opc == 5)                           /* SMMLA/UMMLA, USMMLA */
            return IC_SMMLA;
        if (opc == 2 || opc == 3)                           /* SDOT/UDOT, USDOT */
            return IC_SDOT;
        if (opc == 0 || opc == 1)                           /* SQRDMLAH/SQRDMLSH */
            return IC_VIMUL;
        return IC_OTHER;
    }
    if (m(w, 0x9f200400, 0x0e200400)) {                     /* three same */
        unsigned opc = (w >> 11) & 0x1f, u = (w >> 29) & 1, sz = (w >> 22) & 3;
        if (opc == 0x12 || opc == 0x16 || (opc == 0x13 && u == 0))   /* MLA/MLS, SQDMULH/SQRDMULH, MUL */
            return IC_VIMUL;
        if ((opc == 0x19 && u == 0) || (opc == 0x1b && u == 1 && sz < 2))   /* FMLA/FMLS, FMUL */
            return IC_VFMUL;
        if (opc == 0x1b && u == 0 && sz < 2)                /* FMULX */
            return IC_VFMUL;
        return IC_OTHER;
    }
    if (m(w, 0x9f60c400, 0x0e400400)) {                     /* three same (FP16) */
        unsigned opc = (w >> 11) & 7;
        return (opc == 1 || opc == 3) ? IC_VFMUL : IC_OTHER;  /* FMLA/FMLS, FMUL/FMULX */
    }
    if (m(w, 0x9f200c00, 0x0e200000)) {                     /* three different */
        unsigned opc = (w >> 12) & 0xf;
        if (opc >= 8 && opc <= 0xe)                         /* SMLAL/SQDMLAL/SMLSL/SQDMLSL/SMULL/SQDMULL/PMULL */
            return IC_VIMUL;
        return IC_OTHER;
    }
    if (m(w, 0x9f000400, 0x0f000000)) {                     /* vector x indexed element */
        unsigned opc = (w >> 12) & 0xf, u = (w >> 29) & 1, sz = (w >> 22) & 3;
        if (opc == 0xe)                                     /* SDOT/UDOT (size 10); BFDOT (size 01) */
            return sz == 2 ? IC_SDOT : IC_OTHER;
        if (opc == 0xf)                                     /* SUDOT/USDOT; SQRDMLSH (U=1); BFMLAL (size 11) */
            return u ? IC_VIMUL : (sz == 0 || sz == 2) ? IC_SDOT : IC_OTHER;
        if (opc == 1 || opc == 5 || opc == 9)               /* FMLA, FMLS, FMUL/FMULX (FCMLA with U=1) */
            return IC_VFMUL;
        return IC_VIMUL;                                    /* MUL/MLA/MLS, [SU]MULL/[SU]MLAL/[SU]MLSL, SQDMULH... */
    }
    return IC_OTHER;
}

static inline enum insn_class classify_insn(uint32_t w)
{
    unsigned op0 = (w >> 25) & 0xf;
    if ((op0 & 0x5) == 0x4)                                 /* x1x0: loads and stores */
        return loadstore_class(w);
    if (op0 == 0x2)                                         /* 0010: SVE */
        return sve_class(w);
    if ((op0 & 0x7) == 0x7 && !((w >> 28) & 1) && !((w >> 31) & 1))   /* 0111 with bit 31 clear: Advanced SIMD */
        return simd_class(w);
    return IC_OTHER;
}
#endif
