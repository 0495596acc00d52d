"""The torchao path: ``Int8DynamicActivationInt8WeightConfig`` models on CPU with
the ARM backend enabled run every ``aten::_int_mm`` through our kernel (Triton's
interpreter here), bit-exact with the same model without the backend."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch

from conftest import ARM_EXECUTION
from opregistry import registry

INT_MM = "aten::_int_mm"
ARM = {"backend": "arm", "device": "generic", "execution": ARM_EXECUTION}
CACHED = {INT_MM: {"operand_cache": True}}   # the opt-in operand cache (off in the packaged tables)


@pytest.fixture(autouse=True)
def _torchao():
    """Imported when these tests run, not at collection (it registers ops and pytree nodes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pytest.importorskip("torchao.quantization")


def torchao_model(dtype: torch.dtype, seed: int = 0) -> torch.nn.Module:
    """Three int8 linears (K and N not multiples of the tiles), as torchao quantizes them."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(48, 70), torch.nn.ReLU(), torch.nn.Linear(70, 33),
                                torch.nn.GELU(), torch.nn.Linear(33, 20)).to(dtype).eval()
    quantize_(model, Int8DynamicActivationInt8WeightConfig())
    return model


def int_mm_calls(reg) -> int:
    return reg.status()["ops"][INT_MM]["calls"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_int_mm_served_and_bit_exact(fresh_registry, dtype):
    model = torchao_model(dtype)
    inputs = [torch.randn(shape, dtype=dtype) for shape in ((1, 48), (3, 48), (2, 9, 48))]   # M = 1, 3, 18
    with torch.no_grad():
        expected = [model(x) for x in inputs]
        fresh_registry.enable(ops=CACHED, **ARM)
        for _ in range(2):                               # the second pass reads the cached weights
            for x, ref in zip(inputs, expected):
                y = model(x)
                assert y.dtype == dtype and torch.equal(y, ref)
    st = fresh_registry.status()
    assert int_mm_calls(fresh_registry) == 2 * len(inputs) * 3      # every linear of every forward
    routed = st["backends"]["arm"]["routing"][INT_MM]
    assert sum(routed.values()) == 2 * len(inputs) * 3
    assert routed["decode-m1"] == 2 * 3 and routed["decode-m2-3"] == 2 * 3
    cache = st["backends"]["arm"]["weight_cache"]
    assert cache["entries"] == 3 and cache["hits"] > 0               # the three weights, cached once each
    fresh_registry.disable()
    with torch.no_grad():
        assert all(torch.equal(model(x), ref) for x, ref in zip(inputs, expected))


def write_weights_in_place(model, source) -> None:
    """Copy ``source``'s int8 tensors into ``model``'s from user code (through the
    dispatcher: their version counters move)."""
    for dst, src in zip(model.modules(), source.modules()):
        if isinstance(dst, torch.nn.Linear):
            with torch.no_grad():
                for name in dst.weight.__tensor_flatten__()[0]:
                    getattr(dst.weight, name).copy_(getattr(src.weight, name))
                dst.bias.copy_(src.bias)


@pytest.mark.parametrize("how", ["inner_tensors", "load_state_dict_assign"])
def test_weights_replaced_are_seen(fresh_registry, how):
    model, other = torchao_model(torch.float32, seed=0), torchao_model(torch.float32, seed=1)
    x = torch.randn(2, 48)
    with torch.no_grad():
        expected = other(x)
        fresh_registry.enable(ops=CACHED, **ARM)
        model(x), model(x)                                # cached now
        if how == "inner_tensors":
            write_weights_in_place(model, other)
        else:
            model.load_state_dict(other.state_dict(), assign=True)   # new tensors: new cache keys
        for _ in range(2):
            assert torch.equal(model(x), expected)


@pytest.mark.parametrize("ops", [{INT_MM: {"operand_cache": False}}, None], ids=["explicit", "packaged default"])
def test_load_state_dict_with_operand_cache_off(fresh_registry, ops):
    """torchao's ``Int8Tensor.copy_`` (``load_state_dict`` without ``assign``) writes its int8
    tensor inside ``__torch_dispatch__``, where PyTorch does not bump version counters;
    ``operand_cache: false`` reads the operand in place every call, so such writes are seen."""
    model, other = torchao_model(torch.float32, seed=0), torchao_model(torch.float32, seed=1)
    x = torch.randn(2, 48)
    with torch.no_grad():
        expected = other(x)
        fresh_registry.enable(ops=ops, **ARM) if ops else fresh_registry.enable(**ARM)
        model(x), model(x)
        model.load_state_dict(other.state_dict())
        assert torch.equal(model(x), expected)


@pytest.mark.xfail(strict=True, reason="documented limit (README, backends/arm/int_mm.py): a write inside a "
                                       "subclass's __torch_dispatch__ leaves the version counter unchanged")
def test_load_state_dict_into_cached_weights_is_not_seen(fresh_registry):
    """Pins the limit: if PyTorch or torchao start bumping the version there, this
    XPASSes (strict: fails) and the README's caveat can go."""
    model, other = torchao_model(torch.float32, seed=0), torchao_model(torch.float32, seed=1)
    x = torch.randn(2, 48)
    with torch.no_grad():
        expected = other(x)
        fresh_registry.enable(ops=CACHED, **ARM)
        model(x), model(x)                                # cached now
        model.load_state_dict(other.state_dict())          # Int8Tensor.copy_: qdata written, version unchanged
        assert torch.equal(model(x), expected)


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="torch.compile's CPU code generation needs a C++ compiler")
def test_torch_compile_reaches_our_kernel(fresh_registry):
    """Inductor keeps ``_int_mm`` as an extern call of its ``out=`` overload, which we serve too;
    the compiled model with the backend is bit-exact with the same compiled model without it."""
    model = torchao_model(torch.float32)
    x = torch.randn(3, 48)
    torch._dynamo.reset()
    compiled = torch.compile(model)
    with torch.no_grad():
        expected = compiled(x)
        fresh_registry.enable(ops=CACHED, **ARM)
        y = compiled(x)
    assert int_mm_calls(fresh_registry) == 3
    assert torch.equal(y, expected)
    torch._dynamo.reset()


def test_demo_torchao_quick(capsys):
    from opregistry.registry.cli import main

    assert main(["demo", "--model", "torchao", "--quick", "--backend", "arm", "--execution", ARM_EXECUTION]) == 0
    out = capsys.readouterr().out
    label = "arm[interpreter]" if ARM_EXECUTION == "interpreter" else "arm"
    assert "\npytorch " in out and f"\n{label} " in out
    assert "routing aten::_int_mm: decode-m1=4, prefill-pad=4" in out
    assert f"{label}: output bit-exact with PyTorch's own kernels" in out
