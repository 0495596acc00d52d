"""``aten::_int_mm`` on CPU through the ARM kernels (Triton's interpreter):
exact against PyTorch's own kernel, and a second-operand cache that is never stale."""

from __future__ import annotations

import gc

import pytest
import torch

from conftest import ARM_EXECUTION
from opregistry import registry

INT_MM = "aten::_int_mm"
ARM = {"backend": "arm", "execution": ARM_EXECUTION}   # the interpreter unless --arm-execution=compiled
CACHED = {INT_MM: {"operand_cache": True}}             # most tests here are about the (opt-in) operand cache


def _pytorch_takes_uint8_a() -> bool:
    """torch 2.13's CPU _int_mm takes a uint8 first operand; 2.10's (PyPI's aarch64 CPU wheel) does not."""
    try:
        torch._int_mm(torch.zeros(1, 8, dtype=torch.uint8), torch.zeros(8, 8, dtype=torch.int8))
    except RuntimeError:
        return False
    return True


UINT8_A = _pytorch_takes_uint8_a()     # probed at import: no backend is enabled yet


def rand_i8(*shape, seed=0, dtype=torch.int8):
    gen = torch.Generator().manual_seed(seed)
    low, high = (0, 256) if dtype == torch.uint8 else (-128, 128)
    return torch.randint(low, high, shape, dtype=dtype, generator=gen)


@pytest.fixture
def reg(fresh_registry):
    """A private registry; tests compute PyTorch's result first, then enable arm."""
    return fresh_registry


def served(reg) -> int:
    return reg.status()["ops"][INT_MM]["calls"]


def arm_status(reg) -> dict:
    return reg.status()["backends"]["arm"]


@pytest.mark.parametrize("device", ["generic", "cix-p1", "x86-proxy"])
@pytest.mark.parametrize("m", [0, 1, 2, 3, 8, 17, 64, 65])
def test_every_m_exact(reg, device, m):
    """N=70, K=45 (neither a multiple of the 64 x 32 tiles); B transposed (torchao's
    view of its stored [N, K] weight) and contiguous."""
    a = rand_i8(m, 45, seed=m)
    w = rand_i8(70, 45, seed=100 + m)
    operands = (w.t(), w.t(), w.t().contiguous())      # the second call reads the cached tiles
    expected = [torch._int_mm(a, b) for b in operands]
    reg.enable(device=device, ops=CACHED, **ARM)
    for b, ref in zip(operands, expected):
        y = torch._int_mm(a, b)
        assert y.dtype == torch.int32 and y.shape == ref.shape
        assert torch.equal(y, ref)
    assert served(reg) == 3
    routed = sum(arm_status(reg)["routing"][INT_MM].values())
    assert routed == (3 if m else 0)                  # M=0 returns before routing
    if m:
        assert arm_status(reg)["weight_cache"]["entries"] == 1


@pytest.mark.parametrize("k,n", [(1, 1), (7, 129), (64, 64), (100, 3), (0, 5), (5, 0)])
def test_edge_shapes_exact(reg, k, n):
    a = rand_i8(9, k, seed=k)
    b = rand_i8(n, k, seed=n).t()
    expected = torch._int_mm(a, b)
    reg.enable(device="generic", ops=CACHED, **ARM)
    assert torch.equal(torch._int_mm(a, b), expected)


def test_strided_and_unsigned_first_operand(reg):
    """A transposed (non-unit K stride) or uint8 (which PyTorch's CPU kernel accepts)."""
    a_t = rand_i8(40, 6, seed=1).t()                  # [6, 40], strides (1, 6)
    a_u8 = rand_i8(6, 40, seed=2, dtype=torch.uint8)
    b = rand_i8(33, 40, seed=3).t()
    pairs = [(a_t, b)] + ([(a_u8, b), (a_u8, b[:, 5:])] if UINT8_A else [])
    expected = [torch._int_mm(*pair) for pair in pairs]
    reg.enable(device="generic", ops=CACHED, **ARM)
    for _ in range(2):                                   # read in place, then from the cache
        got = [torch._int_mm(*pair) for pair in pairs]
        for y, ref in zip(got, expected):
            assert torch.equal(y, ref)


def test_int32_wraps_like_pytorch(reg):
    """K x 128 x 128 past 2**31: PyTorch's CPU sum wraps modulo 2**32, and so does ours."""
    k = 131_200
    a = torch.full((1, k), -128, dtype=torch.int8)
    b = torch.full((k, 1), -128, dtype=torch.int8)
    expected = torch._int_mm(a, b)
    assert int(expected) != k * 128 * 128              # it did wrap
    bk = 4096 if ARM_EXECUTION == "interpreter" else 32   # few K steps: the interpreter is slow; a compiler
    wide = {"weight_layout": {"block_k": bk, "block_n": 64},  # unrolls a tile whole (4096 takes it many minutes)
            "routing": [{"kernel": "gemv", "block_m": 1, "block_n": 64, "block_k": bk}]}
    reg.enable(device="generic", ops={INT_MM: {**wide, "operand_cache": True}}, **ARM)
    for _ in range(2):                                   # read in place, then from the cache
        assert torch.equal(torch._int_mm(a, b), expected)


@pytest.mark.parametrize("b_layout", ["k-contiguous", "n-contiguous"])
@pytest.mark.parametrize("a_dtype", [torch.int8, pytest.param(torch.uint8, marks=pytest.mark.skipif(
    not UINT8_A, reason=f"torch {torch.__version__}'s _int_mm takes no uint8 first operand"))])
def test_dot_free_tile_sum_is_exact_at_its_limit(reg, a_dtype, b_layout):
    """The dot-free kernel sums a K tile in fp32 up to block_k 1024: with every product
    -127 x -127 (odd), a tile's sum reaches 16 516 096, just below 2**24, so every partial
    sum is exact there; one tile of 2048 would round (odd values past 2**24). A uint8 A of
    1 is shifted to -127 inside the kernel. B read in place (torchao's K-contiguous view
    or a plain [K, N] tensor), then from the cache."""
    k = 2 * 1024
    a = torch.full((1, k), 1 if a_dtype == torch.uint8 else -127, dtype=a_dtype)
    b = torch.full((3, k), -127, dtype=torch.int8).t() if b_layout == "k-contiguous" else \
        torch.full((k, 3), -127, dtype=torch.int8)
    expected = torch._int_mm(a, b)
    wide = {"weight_layout": {"block_k": 1024, "block_n": 16},
            "routing": [{"kernel": "gemv", "block_m": 1, "block_n": 16, "block_k": 1024}]}
    reg.enable(device="generic", ops={INT_MM: {**wide, "operand_cache": True}}, **ARM)
    for _ in range(2):
        assert torch.equal(torch._int_mm(a, b), expected)


def test_out_overload(reg):
    """``torch._int_mm(a, b, out=c)`` (what torch.compile'd code calls) is served too."""
    a = rand_i8(5, 20, seed=4)
    b = rand_i8(9, 20, seed=5).t()
    expected = torch._int_mm(a, b)
    reg.enable(device="generic", ops=CACHED, **ARM)
    out = torch.full((5, 9), 7, dtype=torch.int32)
    assert torch._int_mm(a, b, out=out) is out
    assert torch.equal(out, expected)
    padded = torch.empty(3, 9, dtype=torch.int32)       # M=3 runs padded to 4 rows: copied back into out
    assert torch.equal(torch._int_mm(a[:3], b, out=padded), expected[:3])
    assert served(reg) == 2


BAD = {
    "3-d self": (lambda: (torch.zeros(2, 4, 8, dtype=torch.int8), torch.zeros(8, 4, dtype=torch.int8)), {}),
    "1-d mat2": (lambda: (torch.zeros(4, 8, dtype=torch.int8), torch.zeros(8, dtype=torch.int8)), {}),
    "K mismatch": (lambda: (torch.zeros(4, 8, dtype=torch.int8), torch.zeros(7, 4, dtype=torch.int8)), {}),
    "int16 self": (lambda: (torch.zeros(4, 8, dtype=torch.int16), torch.zeros(8, 4, dtype=torch.int8)), {}),
    "uint8 mat2": (lambda: (torch.zeros(4, 8, dtype=torch.int8), torch.zeros(8, 4, dtype=torch.uint8)), {}),
    "int64 out": (lambda: (torch.zeros(4, 8, dtype=torch.int8), torch.zeros(8, 4, dtype=torch.int8)),
                  {"out": lambda: torch.empty(4, 4, dtype=torch.int64)}),
    "wrong out size": (lambda: (torch.zeros(4, 8, dtype=torch.int8), torch.zeros(8, 4, dtype=torch.int8)),
                       {"out": lambda: torch.empty(5, 4, dtype=torch.int32)}),
    "strided out": (lambda: (torch.zeros(4, 8, dtype=torch.int8), torch.zeros(8, 4, dtype=torch.int8)),
                    {"out": lambda: torch.empty(4, 8, dtype=torch.int32)[:, :4]}),
}
if not UINT8_A:        # this torch rejects a uint8 first operand: so must we, in its words
    BAD["uint8 self"] = (lambda: (torch.zeros(4, 8, dtype=torch.uint8), torch.zeros(8, 4, dtype=torch.int8)), {})


@pytest.mark.parametrize("case", list(BAD))
def test_rejects_what_pytorch_rejects(reg, case):
    make, kwargs = BAD[case]

    def call():
        return torch._int_mm(*make(), **{k: v() for k, v in kwargs.items()})

    with pytest.raises((RuntimeError, IndexError)) as pytorch_error:
        call()
    reg.enable(device="generic", ops=CACHED, **ARM)
    with pytest.raises((RuntimeError, IndexError)) as ours:
        call()
    assert type(ours.value) is type(pytorch_error.value)
    assert str(ours.value) == str(pytorch_error.value)


# -- the second-operand cache ------------------------------------------------

def test_cached_from_second_use(reg):
    reg.enable(device="generic", ops=CACHED, **ARM)
    a = rand_i8(4, 40, seed=6)
    w = rand_i8(30, 40, seed=7)
    expected = a.int() @ w.t().int()
    for _ in range(3):
        assert torch.equal(torch._int_mm(a, w.t()), expected)
    st = arm_status(reg)
    assert st[INT_MM]["uncached_operands"] == 1         # first use: tiled for the call only
    assert st["weight_cache"]["entries"] == 1 and st["weight_cache"]["hits"] == 1
    for _ in range(3):                                   # a fresh operand every call is never kept
        torch._int_mm(a, rand_i8(40, 30, seed=8))
    st = arm_status(reg)
    assert st[INT_MM]["uncached_operands"] == 4 and st["weight_cache"]["entries"] == 1
    reg.disable()
    reg.enable(device="generic", ops=CACHED, **ARM)
    assert arm_status(reg)["weight_cache"]["entries"] == 0


@pytest.mark.parametrize("write", ["copy_", "add_", "index", "through_view", "no_grad"])
def test_in_place_update_is_never_stale(reg, write):
    reg.enable(device="generic", ops=CACHED, **ARM)
    a = rand_i8(3, 40, seed=9)
    w = rand_i8(30, 40, seed=10)
    for _ in range(2):                                   # cached now
        torch._int_mm(a, w.t())
    new = rand_i8(30, 40, seed=11)
    if write == "copy_":
        w.copy_(new)
    elif write == "add_":
        w.add_(1)
    elif write == "index":
        w[7, 3] = 100 if w[7, 3] != 100 else -100
    elif write == "through_view":
        w.t()[3, 7] = 55 if w[7, 3] != 55 else -55
    else:
        with torch.no_grad():
            w.mul_(-1)
    for _ in range(3):                                   # first use after the write, then cached again
        assert torch.equal(torch._int_mm(a, w.t()), a.int() @ w.t().int())
    st = arm_status(reg)["weight_cache"]
    assert st["entries"] == 1                            # the stale entry was dropped with its token


def test_free_and_recreate_is_never_stale(reg):
    """A new weight at a freed weight's address must not hit the old entry. The address is reused on
    every cycle by construction, not by the allocator's luck: each weight is a fresh tensor on one
    kept storage, written with new values, used twice (the second use is served from the cache),
    then freed."""
    reg.enable(device="generic", ops=CACHED, **ARM)
    a = rand_i8(2, 40, seed=12)
    storage = torch.empty(30 * 40, dtype=torch.int8).untyped_storage()
    address = storage.data_ptr()
    for i in range(12):
        w = torch.empty(0, dtype=torch.int8).set_(storage, 0, (30, 40))
        w.copy_(rand_i8(30, 40, seed=1000 + i))
        assert w.data_ptr() == address                   # the freed weight's address, every cycle
        misses = arm_status(reg)["weight_cache"]["misses"]
        for _ in range(2):
            assert torch.equal(torch._int_mm(a, w.t()), a.int() @ w.t().int()), i
        # the second use made a new entry: never a hit on the previous weight's
        assert arm_status(reg)["weight_cache"]["misses"] == misses + 1, i
        del w
        gc.collect()
        assert arm_status(reg)["weight_cache"]["entries"] == 0        # freed with its weight


def test_inference_tensors_are_not_cached(reg):
    reg.enable(device="generic", ops=CACHED, **ARM)
    with torch.inference_mode():
        a = rand_i8(3, 40, seed=13)
        w = rand_i8(30, 40, seed=14)
        for _ in range(2):
            assert torch.equal(torch._int_mm(a, w.t()), a.int() @ w.t().int())
        w.add_(3)                                        # no version counter to see this
        assert torch.equal(torch._int_mm(a, w.t()), a.int() @ w.t().int())
    st = arm_status(reg)
    assert st["weight_cache"]["entries"] == 0 and st[INT_MM]["uncached_operands"] == 3


def test_cache_stays_within_budget(reg):
    reg.enable(device="generic", weight_cache={"max_bytes": 6000}, ops=CACHED, **ARM)   # one 64x64-padded operand is 4096 B
    a = rand_i8(2, 40, seed=15)
    weights = [rand_i8(30, 40, seed=20 + i) for i in range(4)]
    for _ in range(3):
        for w in weights:
            assert torch.equal(torch._int_mm(a, w.t()), a.int() @ w.t().int())
    st = arm_status(reg)["weight_cache"]
    assert st["bytes"] <= 6000 and st["evictions"] > 0


@pytest.mark.parametrize("ops", [{INT_MM: {"operand_cache": False}}, None], ids=["explicit", "packaged default"])
def test_operand_cache_off_reads_in_place(reg, ops):
    reg.enable(device="generic", ops=ops, **ARM) if ops else reg.enable(device="generic", **ARM)
    a = rand_i8(3, 40, seed=16)
    w = rand_i8(30, 40, seed=17)
    for _ in range(3):
        assert torch.equal(torch._int_mm(a, w.t()), a.int() @ w.t().int())
    st = arm_status(reg)
    assert st["weight_cache"]["entries"] == 0 and st[INT_MM]["uncached_operands"] == 3


def test_disabled_op_is_pytorchs(reg):
    reg.enable(device="generic", ops={INT_MM: {"enabled": False}}, **ARM)
    assert INT_MM not in reg.status()["ops"]
    assert INT_MM not in arm_status(reg)["routing"]


def test_config_rejects_linear_only_keys():
    with pytest.raises(registry.ConfigError, match=r"ops\.aten::_int_mm\.activation_scale: unknown key"):
        registry.Registry().build_config("arm", ops={INT_MM: {"activation_scale": "per_row"}})


@pytest.mark.skipif(ARM_EXECUTION != "compiled",
                    reason="direct launches are made only for compiled kernels (--arm-execution=compiled)")
def test_direct_launches_repeat_the_jit_launch():
    """After the first launch per specialization the runner repeats the compiled kernel
    through Triton's launcher: bit-exact with PyTorch, and a call that Triton would
    specialize differently (A at an odd address, transposed A, another M, uint8 A, a
    cached operand) is bound anew, not launched wrongly."""
    from opregistry import registry
    from opregistry.backends.arm.runtime import ArmRuntime

    cfg = registry.Registry().build_config("arm", device="generic", execution="compiled",
                                           ops={INT_MM: {"operand_cache": True}})
    runner = ArmRuntime(cfg).runners[INT_MM]
    base = rand_i8(16 * 48 + 1, seed=7)
    b = rand_i8(70, 48, seed=8).t()
    cases = {                          # M = 16: a multiple of the rule's 8 rows, so A is not copied to pad it
        "aligned": base[:16 * 48].view(16, 48),
        "offset-1-byte": base[1:].view(16, 48),
        "transposed": base[:16 * 48].view(48, 16).t(),
        "m1": base[:48].view(1, 48),
        **({"uint8": base[:48].view(1, 48).view(torch.uint8)} if UINT8_A else {}),
    }
    for name, a in cases.items():
        expected = torch.ops.aten._int_mm.default(a, b)
        for _ in range(3):             # B in place at its first use, then cached: each its own binding
            assert torch.equal(runner(a, b), expected), name
    assert runner.bound.direct >= len(cases)
    assert len(runner.bound.entries) > len(cases) and None not in runner.bound.entries.values()
