"""Which extra CPU buffer (AMX, CPU_REPACK) llama.cpp gives a host matmul weight, and its size.

Sizes are those llama.cpp 0.3.36 logged on a Xeon with AMX-INT8 for a 2-layer model with n_embd 512,
n_ff 1024 and an untied 1024-token head: 8192 rows of 512 and 1024 rows of 1024 (see cpu_buffers).
"""

from __future__ import annotations

from ggprec.cpu_buffers import AMX, REPACK, HostBuffers, from_flags
from ggprec.ggml_types import lookup

AMX_HOST = from_flags({"avx2", "avx512f", "amx_int8", "avx512_vnni"})
AVX2_HOST = from_flags({"avx2"})
ROWS = [(512, 512), (512, 256), (512, 256), (512, 512), (512, 1024), (512, 1024), (1024, 512)] * 2 + [(512, 1024)]


def moved_mib(host: HostBuffers, type_name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for shape in ROWS:
        where = host.buffer_for(lookup(type_name), shape)
        if where:
            out[where[0]] = out.get(where[0], 0) + where[1] / 2**20
    return {k: round(v, 2) for k, v in out.items()}


def test_amx_takes_q8_0_with_four_extra_bytes_per_block():
    assert moved_mib(AMX_HOST, "q8_0") == {AMX: 5.94}


def test_amx_takes_k_quants_at_their_packed_sizes():
    assert (moved_mib(AMX_HOST, "q4_k"), moved_mib(AMX_HOST, "q5_k"), moved_mib(AMX_HOST, "q6_k"),
            moved_mib(AMX_HOST, "iq4_xs")) == ({AMX: 2.89}, {AMX: 3.52}, {AMX: 4.10}, {AMX: 2.70})


def test_amx_takes_f16_and_legacy_4_bit_types_unpadded():
    assert (moved_mib(AMX_HOST, "f16"), moved_mib(AMX_HOST, "q4_0"), moved_mib(AMX_HOST, "q4_1")) == (
        {AMX: 10.0}, {AMX: 2.81}, {AMX: 3.12})


def test_types_amx_lacks_fall_through_to_repacking_or_stay_mapped():
    assert (moved_mib(AMX_HOST, "iq4_nl"), moved_mib(AMX_HOST, "q2_k"), moved_mib(AMX_HOST, "q5_0"),
            moved_mib(AMX_HOST, "bf16")) == ({REPACK: 2.81}, {REPACK: 1.64}, {}, {})


def test_amx_needs_rows_in_multiples_of_32_and_aligned_row_length():
    q8 = lookup("q8_0")
    assert AMX_HOST.buffer_for(q8, (576, 48)) is None  # 48 rows
    assert AMX_HOST.buffer_for(lookup("q4_0"), (576, 48))[0] == REPACK  # repacking needs a multiple of 8
    assert AMX_HOST.buffer_for(lookup("q6_k"), (640, 64)) is None  # 640 is not a multiple of 256


def test_avx2_repacks_q4_0_q4_k_iq4_nl_but_not_q2_k_or_q8_0():
    assert [t for t in ("q4_0", "q4_k", "iq4_nl", "q2_k", "q8_0", "f16")
            if AVX2_HOST.buffer_for(lookup(t), (512, 512))] == ["q4_0", "q4_k", "iq4_nl"]


def test_no_repack_keeps_every_weight_mapped():
    host = from_flags({"avx2", "amx_int8", "avx512_vnni"}, use_extra=False, note="off")
    assert [host.buffer_for(lookup(t), (512, 512)) for t in ("q4_0", "q8_0", "f16")] == [None, None, None]


def test_routed_expert_weights_are_repacked_like_2d_weights():
    # A 3-D expert tensor (row length, rows, experts) feeds MUL_MAT_ID, which CPU_REPACK supports.
    q4_k = lookup("q4_k")
    assert AVX2_HOST.buffer_for(q4_k, (512, 256, 8)) == (REPACK, q4_k.tensor_bytes((512, 256, 8)))
    assert AVX2_HOST.buffer_for(q4_k, (512, 12, 8)) is None  # 12 rows: not a multiple of 8


def test_amx_never_takes_expert_weights_but_repacking_still_does():
    assert AMX_HOST.buffer_for(lookup("q8_0"), (512, 256, 8)) is None
    assert AMX_HOST.buffer_for(lookup("q4_0"), (512, 256, 8))[0] == REPACK


def test_describe_names_the_rules_a_prediction_used():
    assert AVX2_HOST.describe() == "extra CPU buffers: CPU_REPACK iq4_nl,mxfp4,q4_0,q4_k"
    assert from_flags(set(), use_extra=False).describe() == "extra CPU buffers off (--no-repack)"
