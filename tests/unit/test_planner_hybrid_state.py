"""Hybrid attention + state-space models (issue #18 item 4): Nemotron-H (Mamba2 + attention + MLP
blocks) and Qwen3.5/3.6/3.8 dense (Gated DeltaNet + gated full attention). Every expectation is
computed by hand from vLLM's code, read in the 0.32 source installed by scripts/setup-vllm (and the
older releases where a behaviour changed):

- state shapes: MambaStateShapeCalculator.mamba2_state_shape / gated_delta_net_state_shape
  (vllm/model_executor/layers/mamba/mamba_utils.py), page = MambaSpec.page_size_bytes
  (vllm/v1/kv_cache_interface.py);
- attention block raised to hold a state page: Platform._align_hybrid_block_size
  (vllm/platforms/interface.py; HybridAttentionMambaModelConfig.verify_and_update_config in 0.10.2);
- groups: _get_kv_cache_groups_uniform_page_size, tokens: get_kv_cache_capacity (0.32) and
  _report_kv_cache_config (0.19), per-request blocks: MambaSpec.max_memory_usage_bytes;
- ssm dtype: NemotronHForCausalLMConfig / Qwen3_5ForConditionalGenerationConfig
  (vllm/model_executor/models/config.py of 0.12, 0.14, 0.19, 0.26, 0.32);
- weights: MambaMixer2.__init__ (mamba_mixer2.py), QwenGatedDeltaNetAttention.__init__
  (gdn/qwen_gdn_linear_attn.py), NemotronH*DecoderLayer (nemotron_h.py), Qwen3_5 MTP skipped
  without speculation (WeightsMapper "mtp.": None, qwen3_5.py)."""

from __future__ import annotations

import pytest

from fleetspec.catalog import models, vllm_flags
from fleetspec.planner import findings, memory
from fleetspec.spec import models as spec

GIB = 1 << 30
NEMOTRON = "nvidia/NVIDIA-Nemotron-Nano-9B-v2"
QWEN36 = "Qwen/Qwen3.6-27B"


def facts(model_id: str) -> models.ModelFacts:
    return models.resolve(spec.BaseModelSpec(id=model_id))


# ---------------------------------------------------------------------------------------------
# Catalog shapes and the weights term


@pytest.mark.parametrize("model_id", [NEMOTRON, QWEN36, "Qwen/Qwen3.8-27B"])
def test_shapes_give_the_published_count_exactly(model_id):
    f = facts(model_id)
    assert f.is_hybrid and f.from_catalog and f.source.startswith("https://huggingface.co/")
    assert memory.derived_parameters(f) == f.num_parameters
    assert memory.parameter_counts(f)["layer_scale"] == 1.0


def test_nemotron_nano_layers_one_block_each():
    """hybrid_override_pattern: 27 Mamba2 mixers, 4 attention, 25 plain MLPs, one RMSNorm each.
    Mamba2 (hidden 4480, 128 heads × 80 = 10240, 8 groups × 128 state, kernel 4): in_proj
    4480 × (2·10240 + 2·1024 + 128) = 101,498,880, out_proj 10240 × 4480 = 45,875,200, conv1d
    12288 × 4 + 12288 bias, A/D/dt_bias 3 × 128, gated norm 10240 → 147,446,144 + norm 4480.
    Attention: 4480 × (5120 + 2 × 1024) + 5120 × 4480 + norm = 55,054,720. MLP: 2 × 4480 × 15680 +
    norm = 140,497,280. Embeddings untied: 2 × 131072 × 4480, final norm 4480 → 8,888,227,328."""
    f = facts(NEMOTRON)
    assert (f.mixers.count("mamba2"), f.mixers.count("attention"), f.mixers.count("")) == (27, 4, 25)
    assert f.layer_kinds.count("mamba") == 27 and f.layer_kinds.count("full") == 4
    by_kind = {mixer: memory._hybrid_layer(f, 1, f.mixers.index(mixer)).total for mixer in ("mamba2", "attention", "")}
    assert by_kind == {"mamba2": 147_450_624, "attention": 55_054_720, "": 140_497_280}
    assert 27 * 147_450_624 + 4 * 55_054_720 + 25 * 140_497_280 + 2 * 131072 * 4480 + 4480 == 8_888_227_328


def test_nemotron_weights_and_no_rope_cache():
    """bf16 parameters × 2 B; NemotronHAttention has no rotary embedding, so no cos/sin cache."""
    f = facts(NEMOTRON)
    assert memory.rope_cache_bytes(f, 2) == 0
    assert memory.weight_bytes(f, 1, 1, 2) == 8_888_227_328 * 2


def test_qwen36_gdn_attention_vision_and_mtp_split():
    """GDN (16 key heads, 48 value heads, dims 128): in_proj_qkvz 5120 × (2·2048 + 2·6144) =
    83,886,080, in_proj_ba 5120 × 96, out_proj 6144 × 5120, conv1d 10240 × 4, dt_bias + A_log 96,
    norm 128 → 115,876,064. Gated attention: q_proj 5120 × 2 × 6144, k/v 5120 × 1024 each, o_proj
    6144 × 5120, q_norm + k_norm 2 × 256 → 104,858,112. Text 26,895,998,464 + vision 460,730,096 +
    MTP 424,699,392 = 27,781,427,952 (the split quoted from the safetensors headers)."""
    f = facts(QWEN36)
    assert memory._gdn_params(f, 1) == (83_886_080 + 491_520 + 31_457_280, 40_960 + 96 + 128)
    assert sum(memory._attention_params(f, 1)) == 104_858_112
    assert memory._mtp_params(f) == 424_699_392
    assert memory.vision_params(f).total == pytest.approx(460_730_096)
    assert memory.derived_parameters(f) - 460_730_096 - 424_699_392 == 26_895_998_464


def test_qwen36_weights_skip_mtp_and_rotate_a_quarter_of_the_head():
    """Without MTP speculation vLLM drops mtp.*; the rope cache is [262144, 256 × 0.25] bf16."""
    f = facts(QWEN36)
    assert memory.rope_cache_bytes(f, 2) == 262144 * 64 * 2
    assert memory.weight_bytes(f, 1, 1, 2) == (27_781_427_952 - 424_699_392) * 2 + 262144 * 64 * 2


def test_tensor_parallel_shards_the_state_layers():
    f = facts(QWEN36)
    one, two = memory._gdn_params(f, 1), memory._gdn_params(f, 2)
    assert two[0] == one[0] / 2
    assert memory.mamba2_groups(facts(NEMOTRON), 4) == 8
    one_group = models.resolve(spec.BaseModelSpec(id="x/one-group", architecture=spec.Architecture(
        **BASE, hybrid_override_pattern="M*-", **MAMBA)))
    assert memory.mamba2_groups(one_group, 4) == 4  # n_groups 1 replicated to every rank


# ---------------------------------------------------------------------------------------------
# State pages, block size and groups


def test_qwen36_page_and_block_size_bf16_and_fp8():
    """GDN state at tp 1: conv (4 − 1) × 10240 × 2 B = 61,440 + ssm 48 × 128 × 128 × 4 B (config
    mamba_ssm_dtype float32) = 3,145,728 → 3,207,168 B. Attention per token per layer: 4 KV heads ×
    2 × 256 × 2 B = 4096 → block 16 × cdiv(3,207,168, 16 × 4096) = 784, page 3,211,264; fp8 KV
    (2048 B) → block 1568, the same page."""
    f = facts(QWEN36)
    assert memory.mamba_state_bytes(f, 1, 2, memory.ssm_state_dtype_bytes(f, 2, (0, 32))) == 3_207_168
    bf16 = memory.kv_layout(f, 1, 1, 2, vllm_version=(0, 32))
    assert (bf16.block, bf16.page) == (784, 3_211_264)
    fp8 = memory.kv_layout(f, 1, 1, 1, kv_cache_dtype="fp8_e4m3", vllm_version=(0, 32))
    assert (fp8.block, fp8.page) == (1568, 3_211_264)
    # 48 GDN + 16 full: group size 16 → 1 attention group and 3 state groups, no padding
    assert sorted(bf16.groups) == ["full", "mamba", "mamba", "mamba"] and bf16.group_size == 16
    assert bf16.padding_layers == 0


def test_qwen36_tensor_parallel_2_halves_the_page():
    """tp 2: conv 3 × 5120 × 2 + ssm 24 × 128 × 128 × 4 = 1,603,584; attention 2 KV heads → 2048 B
    per token: block 16 × cdiv(1,603,584, 32768) = 784, page 1,605,632."""
    layout = memory.kv_layout(facts(QWEN36), 2, 1, 2, vllm_version=(0, 32))
    assert (layout.block, layout.page) == (784, 1_605_632)


def test_user_block_size_sets_the_alignment():
    """align = max(16, --block-size): with 1024 the block stays 1024 (already above 784)."""
    assert memory.kv_layout(facts(QWEN36), 1, 1, 2, vllm_version=(0, 32), block=1024).block == 1024
    assert memory.hybrid_block_size(32, 3_207_168, 4096) == 800  # 32 × cdiv(3,207,168, 131072)


def test_nemotron_ssm_dtype_by_release_and_groups():
    """Mamba2 state at tp 1: conv 3 × (10240 + 2048) × 2 B = 73,728; ssm 128 × 80 × 128 elements:
    float32 in 0.26+ (5,242,880 B), float16 in 0.14-0.19, the model dtype in 0.10-0.12 (2,621,440 B).
    Attention 8 KV heads × 2 × 128 × 2 B = 4096 per token: block 16 × cdiv(5,316,608, 65536) = 1312
    (0.32), 16 × cdiv(2,695,168, 65536) = 672 (0.19). 27 state + 4 full: group size 4, 7 state
    groups (one padding layer) and 1 attention group."""
    f = facts(NEMOTRON)
    assert [memory.ssm_state_dtype_bytes(f, 2, v) for v in ((0, 12), (0, 19), (0, 26), (0, 32))] == [2, 2, 4, 4]
    assert memory.ssm_state_dtype_bytes(f, 2, (0, 32), "float16") == 2  # --mamba-ssm-cache-dtype wins
    new, old = memory.kv_layout(f, 1, 1, 2, vllm_version=(0, 32)), memory.kv_layout(f, 1, 1, 2, vllm_version=(0, 19))
    assert (new.block, new.page, old.block, old.page) == (1312, 1312 * 4096, 672, 672 * 4096)
    assert new.groups.count("mamba") == 7 and new.groups.count("full") == 1 and new.group_size == 4
    assert new.padding_layers == 1


def test_qwen35_config_dtype_is_read_from_0_17():
    f = facts(QWEN36)
    assert memory.ssm_state_dtype_bytes(f, 2, (0, 16)) == 2
    assert memory.ssm_state_dtype_bytes(f, 2, (0, 17)) == 4


# ---------------------------------------------------------------------------------------------
# Blocks per request and the logged token count


def test_state_blocks_per_request_by_release_and_prefix_caching():
    """mamba_cache_mode "none": 1 block; "align" (prefix caching, default for hybrids in 0.26+): 2,
    plus MambaMixer2's prefill checkpoint block in 0.32+."""
    q, n = facts(QWEN36), facts(NEMOTRON)
    assert memory.state_blocks_per_request(q, (0, 19), None) == 1
    assert memory.state_blocks_per_request(q, (0, 26), None) == 2
    assert memory.state_blocks_per_request(n, (0, 26), None) == 2
    assert memory.state_blocks_per_request(n, (0, 32), None) == 3
    assert memory.state_blocks_per_request(q, (0, 32), False) == 1
    assert memory.state_blocks_per_request(q, (0, 19), True) == 2


def test_qwen36_tokens_logged_on_0_32_and_0_19():
    """20 GiB: num_blocks = 20 GiB // (16 × 3,211,264) = 417. 0.32: per request at 262144 tokens
    cdiv(262144, 784) = 335 attention blocks + 3 groups × 2 state blocks = 341 → int(417 / 341 ×
    262144) = 320,569. 0.19: num_blocks // 4 groups × min block size (784; the state groups' block is
    max_model_len without prefix caching) = 104 × 784 = 81,536, and 335 + 3 blocks per request."""
    f = facts(QWEN36)
    new = memory.kv_layout(f, 1, 1, 2, vllm_version=(0, 32), max_model_len=262144)
    assert new.num_blocks(20 * GIB) == 417 and new.blocks_per_request(262144) == 341
    assert new.tokens(20 * GIB, 262144) == int(417 / 341 * 262144) == 320_569
    old = memory.kv_layout(f, 1, 1, 2, vllm_version=(0, 19), max_model_len=262144)
    assert old.blocks_per_request(262144) == 338 and old.tokens(20 * GIB, 262144) == 81_536


def test_per_token_bytes_leave_the_state_out():
    layout = memory.kv_layout(facts(QWEN36), 1, 1, 2, vllm_version=(0, 32))
    assert layout.bytes_per_token == 16 * 4096  # one attention group of 16 layers × 4096 B


# ---------------------------------------------------------------------------------------------
# Spec, flags and findings


BASE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
        "vocab_size": 256}
MAMBA = {"mamba_num_heads": 4, "mamba_head_dim": 16, "n_groups": 1, "ssm_state_size": 16, "conv_kernel": 4}


def test_inline_pattern_is_validated():
    spec.Architecture(**BASE, hybrid_override_pattern="M*-", **MAMBA)
    with pytest.raises(ValueError, match="num_hidden_layers is 3"):
        spec.Architecture(**BASE, hybrid_override_pattern="M*", **MAMBA)
    with pytest.raises(ValueError, match="MoE blocks"):
        spec.Architecture(**BASE, hybrid_override_pattern="M*E", **MAMBA)
    with pytest.raises(ValueError, match="mamba_num_heads"):
        spec.Architecture(**BASE, hybrid_override_pattern="M*-")
    with pytest.raises(ValueError, match="linear_num_key_heads"):
        spec.Architecture(**BASE, layer_types=["linear_attention", "full_attention", "full_attention"])


def test_inline_hybrid_resolves_to_mixers():
    f = models.resolve(spec.BaseModelSpec(id="x/tiny-hybrid", architecture=spec.Architecture(
        **BASE, hybrid_override_pattern="M*-", **MAMBA)))
    assert f.mixers == ("mamba2", "attention", "") and f.mlp_layers == (False, False, True)
    assert f.layer_kinds == ("mamba", "full", "none") and f.is_hybrid


def test_extra_args_prefix_caching_and_ssm_dtype():
    assert vllm_flags.prefix_caching(["--enable-prefix-caching", "--no-enable-prefix-caching"]) is False
    assert vllm_flags.prefix_caching([]) is None
    assert vllm_flags.mamba_ssm_cache_dtype(["--mamba-ssm-cache-dtype", "float32"]) == "float32"
    assert vllm_flags.mamba_ssm_cache_dtype(["--mamba-ssm-cache-dtype=fp8"]) is None


def test_state_before_the_hybrid_manager_is_said_to_be_v0s_cache():
    fleet = spec.FleetSpec.model_validate({
        "name": "h", "base_model": {"id": NEMOTRON, "max_model_len": 8192}, "gpus": "1x L40S",
        "servers": [{"name": "s"}], "runtime": {"vllm_version": "0.9.2"}})
    codes = {d.code for d in findings.hybrid_state_findings(fleet, facts(NEMOTRON))}
    assert "hybrid-state-v0-cache" in codes and "hybrid-state-not-modelled" not in codes
    newer = fleet.model_copy(update={"runtime": fleet.runtime.model_copy(update={"vllm_version": "0.19.0"})})
    assert not findings.hybrid_state_findings(newer, facts(NEMOTRON))


def test_a_planned_replica_reports_its_state_groups():
    """The whole budget: Qwen3.6-27B on one H100 under 0.32 (bf16): 4 groups of 16 layers, the KV
    term explains the padded state page and the raised block."""
    from fleetspec.planner import report

    fleet = spec.FleetSpec.model_validate({
        "name": "h", "base_model": {"id": QWEN36, "max_model_len": 32768}, "gpus": "1x H100-80GB",
        "servers": [{"name": "s"}], "runtime": {"vllm_version": "0.32.0"}})
    b = report.plan_fleet(fleet).servers[0].replicas[0].budget
    assert b.kv_group_size == 16 and b.kv_groups.count("mamba") == 3
    [kv] = [t for t in b.terms if t.term == "kv_cache"]
    assert "3,211,264 B" in kv.source and "784 tokens" in kv.source and kv.confidence == "computed"
    per_request = (-(-32768 // 784) + 3 * 2) * 16 * 3_211_264
    assert b.request_bytes == per_request


# ---------------------------------------------------------------------------------------------
# Before 0.10.2: V0 and its MambaCacheManager (model_executor/models/mamba_cache.py of 0.8.4 and
# 0.10.1; the V0 fallback in _is_v1_supported_oracle, engine/arg_utils.py of 0.8.4 and 0.10.1)


def test_mamba_models_fall_back_to_v0_before_0_10_2():
    nemotron, llama = facts(NEMOTRON), facts("meta-llama/Llama-3.1-8B-Instruct")
    assert memory.state_model_runs_v0(nemotron, "0.8.4")  # SupportsV0Only
    assert memory.state_model_runs_v0(nemotron, "0.10.1")  # has_inner_state and _warn_or_fallback("Mamba")
    assert not memory.state_model_runs_v0(nemotron, "0.10.1", "1")  # VLLM_USE_V1=1 set explicitly
    assert not memory.state_model_runs_v0(nemotron, "0.10.2")  # the fallback is gone
    assert not memory.state_model_runs_v0(llama, "0.10.1")


def test_v0_pads_the_state_slots_to_a_capture_size():
    """VllmConfig.pad_for_cudagraph over [1, 2, 4] + multiples of 8 (_set_cudagraph_sizes)."""
    assert [memory.v0_capture_size(n) for n in (1, 3, 5, 100, 256)] == [1, 4, 8, 104, 256]


def test_v0_mamba_cache_of_nemotron_nano():
    """Nemotron-Nano-9B-v2 (27 Mamba2 layers, 128 heads × 80, 8 groups, state 128, conv 4), bf16:
    conv (3, 128·80 + 2·8·128 = 12288) × 2 B = 73,728 B and ssm 128·80·128 × 2 B = 2,621,440 B per
    slot and layer; × 256 slots × 27 layers. With --mamba-ssm-cache-dtype float32 the temporal_state
    tensor alone is 27 × 256 × 128·80·128 × 4 B = 33.75 GiB, the allocation vllm-project/vllm#23230
    (0.10.1, L40S) reports failing."""
    f = facts(NEMOTRON)
    per_slot = 3 * 12288 * 2 + 128 * 80 * 128 * 2
    assert memory.v0_state_cache_bytes(f, 1, 1, 256, False, 2, "0.10.1") == 27 * 256 * per_slot
    assert memory.v0_state_cache_bytes(f, 1, 1, 100, True, 2, "0.10.1") == 27 * 100 * per_slot
    assert memory.v0_state_cache_bytes(f, 1, 1, 100, False, 2, "0.10.1") == 27 * 104 * per_slot
    fp32 = memory.v0_state_cache_bytes(f, 1, 1, 256, False, 2, "0.10.1", mamba_ssm_cache_dtype="float32")
    assert fp32 - 27 * 256 * 3 * 12288 * 2 == 27 * 256 * 128 * 80 * 128 * 4 == round(33.75 * GIB)
    # tensor parallel 2: 8 groups split evenly, conv 6144 channels and 64 heads per GPU
    assert memory.v0_state_cache_bytes(f, 2, 1, 256, False, 2, "0.10.1") == 27 * 256 * (3 * 6144 * 2 + 64 * 80 * 128 * 2)


def test_v0_plan_of_nemotron_takes_the_state_from_the_kv_budget():
    """0.10.1 on one L40S: V0, KV blocks on the 4 attention layers only (CacheEngine), the state cache
    in the non-KV memory; with the float32 ssm state the replica does not fit."""
    from fleetspec.planner import report

    def budget(extra, version="0.10.1"):
        fleet = spec.FleetSpec.model_validate({
            "name": "h", "base_model": {"id": NEMOTRON}, "gpus": "1x L40S",
            "servers": [{"name": "s", "extra_args": extra}], "runtime": {"vllm_version": version}})
        plan = report.plan_fleet(fleet)
        return plan, plan.servers[0].replicas[0].budget

    plan, b = budget([])
    f = facts(NEMOTRON)
    assert b.state_cache == memory.v0_state_cache_bytes(f, 1, 1, 256, False, 2, "0.10.1")
    assert b.kv_groups == ("full",) and b.kv_group_size == 4
    assert b.kv_cache == b.budget - b.weights - b.activation - b.state_cache - b.non_torch
    assert b.kv_tokens == b.kv_cache // (16 * 4 * 8 * 128 * 2 * 2) * 16
    assert any(t.term == "state_cache" for t in b.terms) and b.to_json()["state_cache_gib"] == 17.35
    assert plan.fits
    plan, b = budget(["--mamba-ssm-cache-dtype", "float32"])
    assert not plan.fits and b.kv_cache < 0
    _, newer = budget([], "0.10.2")
    assert newer.state_cache == 0 and "mamba" in newer.kv_groups
