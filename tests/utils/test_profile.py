"""The per-operation profiler: HLO parsing and grouping, and a real trace whose heavy
operation is known."""

import jax
import jax.numpy as jnp
import pytest

from nas_jax.utils.profile import category, describe, parse_hlo, profile_program

# long HLO lines are wrapped with a backslash (joined back by Python)
HLO = """HloModule jit_f, entry_computation_layout={(f32[8,8]{1,0})->f32[8]{0}}

%fused_add (param_0: f32[8,8]) -> f32[8] {
  %param_0 = f32[8,8]{1,0} parameter(0)
  %constant.1 = f32[] constant(0)
  %exponential.2 = f32[8,8]{1,0} exponential(f32[8,8]{1,0} %param_0)
  ROOT %reduce.3 = f32[8]{0} reduce(f32[8,8]{1,0} %exponential.2, f32[] %constant.1), \
dimensions={1}, to_apply=%add
}

%fused_conv (p0: f32[2,4,4,3], p1: f32[3,3,3,5]) -> f32[2,4,4,5] {
  %p0 = f32[2,4,4,3]{3,2,1,0} parameter(0)
  %p1 = f32[3,3,3,5]{3,2,1,0} parameter(1)
  ROOT %convolution.9 = f32[2,4,4,5]{3,2,1,0} convolution(f32[2,4,4,3]{3,2,1,0} %p0, \
f32[3,3,3,5]{3,2,1,0} %p1), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f
}

ENTRY %main.5 (Arg_0.1: f32[8,8]) -> f32[8] {
  %Arg_0.1 = f32[8,8]{1,0} parameter(0)
  %fusion = f32[8]{0} fusion(f32[8,8]{1,0} %Arg_0.1), kind=kInput, calls=%fused_add
  %fusion.1 = f32[2,4,4,5]{3,2,1,0} fusion(%a, %b), kind=kCustom, calls=%fused_conv
  ROOT %copy.4 = f32[8]{0} copy(f32[8]{0} %fusion)
}
"""


def test_parse_and_describe_a_module():
    instructions, computations = parse_hlo(HLO)
    assert set(computations) == {"fused_add", "fused_conv", "main.5"}
    assert [i.opcode for i in computations["fused_add"]] == [
        "parameter", "constant", "exponential", "reduce"]
    assert instructions["copy.4"].opcode == "copy"
    assert instructions["copy.4"].shape == "f32[8]{0}"
    fusion = describe(instructions["fusion"], computations)
    assert fusion == "fusion kInput -> f32[8]{0}: exponential, reduce"
    assert category(fusion) == "reduce"
    conv = describe(instructions["fusion.1"], computations)
    assert conv == ("fusion kCustom: convolution b01f_01io->b01f window[size=3x3 pad=1_1x1_1]"
                    " -> f32[2,4,4,5]{3,2,1,0}")
    assert category(conv) == "convolution"
    assert describe(instructions["copy.4"], computations) == "copy -> f32[8]{0}"
    assert category("copy -> f32[8]{0}") == "copy"
    assert category("fusion kLoop -> f32[4]{0}: add, multiply") == "elementwise"
    assert category("fusion kLoop -> f32[4]{0}: add, reduce-window x2") == "reduce-window"


def test_a_traced_program_is_dominated_by_its_convolution():
    """A large convolution next to a tiny elementwise op: the profile finds the program's
    operations in the trace, and the convolution takes most of the time."""
    x = jnp.ones((8, 32, 32, 32))
    w = jnp.ones((3, 3, 32, 64)) * 0.01
    bias = jnp.ones((4,))

    @jax.jit
    def f(x, w, bias):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y, jnp.tanh(bias) * 2.0

    try:
        profile = profile_program(f, x, w, bias, calls=2)
    except (ImportError, AttributeError) as e:  # the trace reader is a private JAX module
        pytest.skip(f"this JAX has no trace reader: {e}")
    assert profile.wall_s > 0
    assert profile.rows, "no traced event matched an instruction of the program"
    top = profile.rows[0]
    assert top["category"] == "convolution", profile.table()
    assert "->" in top["op"] and top["count"] >= 1
    by_category = dict(profile.by_category())
    assert by_category["convolution"] > 0.5 * sum(by_category.values())
    assert "by category:" in profile.table(5)
