"""Config schema, layering and the documented error messages."""

from __future__ import annotations

import re

import pytest

from opregistry import registry
from opregistry.backends.common import LINEAR_DYNAMIC

OP = LINEAR_DYNAMIC


@pytest.fixture(scope="module")
def reg():
    return registry.Registry()


def write(tmp_path, text, name="deploy.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_layering_packaged_then_deployment_then_keywords(reg, tmp_path, monkeypatch):
    deploy = write(tmp_path, f"""
execution: interpreter
weight_cache: {{max_bytes: 1000}}
ops:
  {OP}:
    padding: false
""")
    cfg = reg.build_config("arm", deploy, device="cix-p1", weight_cache={"max_bytes": 5})
    assert cfg.execution == "interpreter"                      # deployment over packaged 'auto'
    assert cfg.weight_cache.max_bytes == 5                     # keyword over deployment
    assert cfg.op(OP).padding is False                         # deployment over packaged
    assert cfg.op(OP).routing[0].name == "decode-m1"            # packaged kept where not overridden
    assert cfg.source_of(f"ops.{OP}.padding") == deploy
    assert cfg.source_of("weight_cache.max_bytes") == "<keyword overrides>"
    assert cfg.source_of(f"ops.{OP}.routing").endswith("cix-p1.yaml")

    monkeypatch.setenv("OPREGISTRY_CONFIG", deploy)
    assert reg.build_config("arm", device="cix-p1").execution == "interpreter"


def test_backend_taken_from_the_deployment_file(reg, tmp_path):
    deploy = write(tmp_path, "backend: reference\n")
    assert reg.build_config(config=deploy).backend == "reference"


def test_routing_list_replaces_lower_layer(reg):
    rules = [{"name": "only", "kernel": "dot", "block_m": 8, "block_n": 64, "block_k": 32}]
    cfg = reg.build_config("arm", device="cix-p1", ops={OP: {"routing": rules}})
    assert [r.name for r in cfg.op(OP).routing] == ["only"]


CASES = [
    # (deployment text, expected message fragment)
    (f"ops:\n  {OP}:\n    padding: 'yes'\n",
     f"deploy.yaml: ops.{OP}.padding: expected a boolean, got 'yes'"),
    ("execution: fast\n", "deploy.yaml: execution: expected one of auto, compiled, interpreter, got 'fast'"),
    ("weight_cache: {max_bytes: -1}\n", "weight_cache.max_bytes: expected an integer >= 0, got -1"),
    ("weight_cache: {max_byte: 10}\n", "weight_cache.max_byte: unknown key; expected one of: max_bytes"),
    ("colour: blue\n", "deploy.yaml: colour: unknown key"),
    ("ops:\n  quantized::linear_dynamc: {enabled: true}\n",
     "ops.quantized::linear_dynamc: unknown op for backend 'arm'; it provides: quantized::linear_dynamic"),
    (f"ops:\n  {OP}:\n    activation_scale: per_col\n", "expected one of per_row, per_tensor, pytorch, got 'per_col'"),
    (f"ops:\n  {OP}:\n    routing:\n      - {{kernel: dot, block_m: 8, block_n: 48, block_k: 32}}\n",
     f"ops.{OP}.routing[0].block_n: expected a power of two (Triton tile sizes), got 48"),
    (f"ops:\n  {OP}:\n    routing:\n      - {{kernel: dot, block_m: 0, block_n: 64, block_k: 32}}\n",
     f"ops.{OP}.routing[0].block_m: expected an integer >= 1, got 0"),
    (f"ops:\n  {OP}:\n    routing:\n      - {{kernel: dot, block_m: 8, block_n: 64}}\n",
     f"ops.{OP}.routing[0].block_k: missing"),
    (f"ops:\n  {OP}:\n    routing:\n      - {{when: {{m: 1}}, kernel: dot, block_m: 1, block_n: 64, block_k: 4}}\n",
     f"ops.{OP}.routing: no rule matches M=2"),
    (f"ops:\n  {OP}:\n    routing:\n      - {{name: a, kernel: dot, block_m: 8, block_n: 64, block_k: 32}}\n"
     f"      - {{name: b, when: {{m: 1}}, kernel: dot, block_m: 1, block_n: 64, block_k: 4}}\n",
     f"ops.{OP}.routing[1]: rule 'b' is unreachable"),
    (f"ops:\n  {OP}:\n    routing:\n      - {{kernel: tiled, block_m: 8, block_n: 64, block_k: 32}}\n",
     f"ops.{OP}.routing[0].kernel: expected one of dot, gemv, dot_prequant, gemv_prequant, rowdot_prequant, pytorch, got 'tiled'"),
    (f"ops:\n  {OP}:\n    routing:\n      - {{kernel: dot, block_m: 8, block_n: 64, block_k: 64}}\n",
     f"ops.{OP}.routing[0].block_k: 64 must divide ops.{OP}.weight_layout.block_k=32"),
    (f"ops:\n  {OP}:\n    routing:\n      - {{kernel: dot, block_m: 8, block_n: 64, block_k: 32, num_warps: 4}}\n",
     f"ops.{OP}.routing[0].num_warps: unknown key for an arm routing rule"),
    (f"ops:\n  {OP}:\n    num_warps: 4\n", f"ops.{OP}.num_warps: unknown key for the arm backend"),
    ("backend: reference\n", "deploy.yaml: backend: this config is for backend 'reference', but backend 'arm' was requested"),
    ("ops: [1, 2]\n", "deploy.yaml: ops: expected a mapping, got list"),
    ("- just\n- a list\n", "deploy.yaml: expected a mapping at the top level, got list"),
    ("ops: {a: 1\n", "deploy.yaml: invalid YAML"),
    ("!!python/object/apply:os.system ['echo hi']\n", "deploy.yaml: invalid YAML"),
]


@pytest.mark.parametrize("text, message", CASES, ids=[c[1][:40] for c in CASES])
def test_documented_error_messages(reg, tmp_path, text, message):
    with pytest.raises(registry.ConfigError) as info:
        reg.build_config("arm", write(tmp_path, text), device="generic")
    assert message in str(info.value)
    assert str(info.value).startswith(str(tmp_path / "deploy.yaml")) or "arm/generic.yaml" in str(info.value)


def test_missing_file(reg, tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(registry.ConfigError, match=rf"{missing}: file not found"):
        reg.build_config("arm", str(missing))


def test_keyword_override_errors_name_their_source(reg):
    with pytest.raises(registry.ConfigError, match=r"<keyword overrides>: execution: expected one of"):
        reg.build_config("arm", execution="gpu")


def test_failed_enable_changes_nothing(tmp_path):
    reg = registry.Registry()
    reg.enable("reference")
    before = reg.status()["ops"]
    with pytest.raises(registry.ConfigError):
        reg.enable("arm", write(tmp_path, "execution: fast\n"))
    assert reg.status()["ops"].keys() == before.keys()
    assert all(v["backend"] == "reference" for v in reg.status()["ops"].values())
    reg.disable()


def test_routing_check_is_exact_for_periodic_conditions(reg):
    rules = [
        {"name": "m64", "when": {"m_multiple_of": 64}, "kernel": "dot", "block_m": 64, "block_n": 64, "block_k": 32},
        {"name": "m8", "when": {"m_multiple_of": 8}, "kernel": "dot", "block_m": 8, "block_n": 64, "block_k": 32},
        {"name": "small", "when": {"m_max": 16}, "kernel": "dot", "block_m": 8, "block_n": 64, "block_k": 32},
    ]
    with pytest.raises(registry.ConfigError, match="no rule matches M=17"):
        reg.build_config("arm", device="generic", ops={OP: {"routing": rules}})
    rules.append({"name": "rest", "kernel": "dot", "block_m": 8, "block_n": 64, "block_k": 32, "pad_m": True})
    cfg = reg.build_config("arm", device="generic", ops={OP: {"routing": rules}})
    assert [r.name for r in cfg.op(OP).routing] == ["m64", "m8", "small", "rest"]


def test_an_override_of_one_op_leaves_an_aliased_op_alone(reg):
    """The packaged tables write the relu op as a YAML alias of the linear op;
    a layer that changes one op must not change the other."""
    cfg = reg.build_config("arm", device="generic", ops={OP: {"activation_scale": "per_tensor", "padding": False}})
    relu = cfg.op("quantized::linear_relu_dynamic")
    assert (cfg.op(OP).activation_scale, cfg.op(OP).padding) == ("per_tensor", False)
    assert (relu.activation_scale, relu.padding) == ("per_row", True)


@pytest.mark.parametrize("layer, new, attr", [
    ({"execution": "native"}, "compiled", lambda c: c.execution),
    ({"ops": {OP: {"activation_scale": "native"}}}, "pytorch", lambda c: c.op(OP).activation_scale),
])
def test_old_spellings_warn_and_name_the_new_one(reg, tmp_path, layer, new, attr):
    import yaml

    path = write(tmp_path, yaml.safe_dump(layer))
    with pytest.warns(FutureWarning, match=rf"deploy.yaml: .*'native' is deprecated, write '{new}'"):
        cfg = reg.build_config("arm", path, device="generic")
    assert attr(cfg) == new


def test_the_core_schema_knows_no_backend_field():
    """The registry keeps backend, device, execution, weight_cache and
    ops.<op>.enabled; every other op key is read by the backend's own schema."""
    import dataclasses

    from opregistry.registry.config import Config, OpConfig, WeightCacheConfig

    assert [f.name for f in dataclasses.fields(OpConfig)] == ["enabled"]
    assert [f.name for f in dataclasses.fields(WeightCacheConfig)] == ["max_bytes"]
    assert {f.name for f in dataclasses.fields(Config)} == {"backend", "device", "execution", "weight_cache", "ops",
                                                           "sources", "origins"}


def test_a_backend_without_a_schema_accepts_only_enabled(tmp_path):
    from opregistry.registry import Availability, BackendInfo, OpKernel, hookimpl
    from opregistry.registry.plugins import Plugins

    class Tiny:
        @hookimpl
        def opregistry_backend_info(self):
            return BackendInfo("tiny", (OP,))

        @hookimpl
        def opregistry_backend_availability(self, backend):
            return Availability(True)

        @hookimpl
        def opregistry_op_kernels(self, backend, config):
            return {OP: OpKernel(lambda x, w, reduce_range=False: x, "CPU")}

    plugins = Plugins()
    plugins.register(Tiny, name="tiny")
    reg = registry.Registry(plugins)
    assert reg.build_config("tiny", ops={OP: {"enabled": False}}).op(OP).enabled is False
    with pytest.raises(registry.ConfigError, match=rf"ops.{OP}.padding: unknown key for backend 'tiny'"):
        reg.build_config("tiny", ops={OP: {"padding": True}})


# -- op settings given once for every op ------------------------------------------------

INT_MM = "aten::_int_mm"
RELU = "quantized::linear_relu_dynamic"


def test_a_top_level_op_setting_applies_to_every_op_that_has_it(reg):
    cfg = reg.build_config("arm", device="generic", activation_scale="pytorch", padding=False)
    assert cfg.op(OP).activation_scale == cfg.op(RELU).activation_scale == "pytorch"   # over the packaged per-op
    assert cfg.op(OP).padding is cfg.op(RELU).padding is cfg.op(INT_MM).padding is False
    assert not hasattr(cfg.op(INT_MM), "activation_scale")          # _int_mm has no activation scheme
    assert cfg.source_of(f"ops.{OP}.activation_scale") == "<keyword overrides>"


def test_per_op_settings_win_in_the_same_or_a_higher_layer(reg, tmp_path):
    deploy = write(tmp_path, f"activation_scale: per_tensor\nops:\n  {RELU}: {{activation_scale: pytorch}}\n")
    cfg = reg.build_config("arm", deploy, device="generic")
    assert (cfg.op(OP).activation_scale, cfg.op(RELU).activation_scale) == ("per_tensor", "pytorch")
    cfg = reg.build_config("arm", deploy, device="generic", ops={OP: {"activation_scale": "per_row"}})
    assert (cfg.op(OP).activation_scale, cfg.op(RELU).activation_scale) == ("per_row", "pytorch")
    cfg = reg.build_config("arm", deploy, device="generic", activation_scale="per_row")   # higher layer, top level
    assert (cfg.op(OP).activation_scale, cfg.op(RELU).activation_scale) == ("per_row", "per_row")


@pytest.mark.parametrize("text, message", [
    ("activation_scale: 42\n", "deploy.yaml: activation_scale: expected one of per_row, per_tensor, pytorch, got 42"),
    ("padding: 'no'\n", "deploy.yaml: padding: expected a boolean, got 'no'"),
    ("weight_layout: {block_k: 48}\n", "deploy.yaml: weight_layout.block_k: expected a power of two"),
    ("weight_layout: {block_q: 8}\n", "deploy.yaml: weight_layout.block_q: unknown key; expected one of: block_k"),
    ("fast_paht: true\n", "deploy.yaml: fast_paht: unknown key; expected one of: backend, device, execution, "
                          "weight_cache, ops, or an op setting of backend 'arm': activation_scale, deterministic, "
                          "fast_path, operand_cache, padding, routing, weight_layout"),
    ("enabled: false\n", "deploy.yaml: enabled: unknown key at the top level; 'enabled' is set per op"),
])
def test_top_level_op_setting_errors_name_the_file_and_the_key_as_written(reg, tmp_path, text, message):
    with pytest.raises(registry.ConfigError) as info:
        reg.build_config("arm", write(tmp_path, text), device="generic")
    assert message in str(info.value)


def test_an_op_setting_of_another_backend_is_an_unknown_key(reg):
    with pytest.raises(registry.ConfigError, match=r"<keyword overrides>: padding: unknown key; .* backend "
                                                   r"'reference': activation_scale, deterministic$"):
        reg.build_config("reference", padding=True)


@pytest.mark.parametrize("config, given", [
    (42, "int 42"), (3.5, "float 3.5"), (True, "bool True"), (b"deploy.yaml", "bytes"), (["a.yaml"], "list"),
    ("", "an empty string"), (object(), "object"),
])
def test_a_config_of_the_wrong_type_is_a_config_error(reg, config, given):
    with pytest.raises(registry.ConfigError, match=rf"^config: expected the path of a YAML file \(str or "
                                                   rf"os.PathLike\) or a mapping of config keys, got {given}$"):
        reg.build_config("reference", config)


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe\x00binary", "not UTF-8 text"), (b"42\n", "expected a mapping at the top level, got 42"),
    (b"[1, 2]\n", "expected a mapping at the top level, got list"), (b"a: [\n", "invalid YAML"),
])
def test_any_file_that_is_not_a_config_is_a_config_error(reg, tmp_path, content, message):
    path = tmp_path / "deploy.yaml"
    path.write_bytes(content)
    for config in (path, str(path)):
        with pytest.raises(registry.ConfigError, match=re.escape(f"{path}: {message}")):
            reg.build_config("reference", config)
    with pytest.raises(registry.ConfigError, match=re.escape(f"{tmp_path}: cannot read file")):
        reg.build_config("reference", tmp_path)                 # a directory


def test_the_environment_variable_is_named_when_its_file_is_missing(reg, tmp_path, monkeypatch):
    monkeypatch.setenv("OPREGISTRY_CONFIG", str(tmp_path / "gone.yaml"))
    with pytest.raises(registry.ConfigError, match=r"gone\.yaml: file not found \(named by \$OPREGISTRY_CONFIG\)"):
        reg.build_config("reference")
