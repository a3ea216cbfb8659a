"""Every memory formula against values computed by hand from config.json shapes."""

from __future__ import annotations

import pytest

from fleetspec.catalog import gpus, models
from fleetspec.planner import memory, report
from fleetspec.spec import models as spec

GIB, MIB = 1 << 30, 1 << 20


def facts(model_id: str) -> models.ModelFacts:
    return models.resolve(spec.BaseModelSpec(id=model_id))


LLAMA8 = facts("meta-llama/Llama-3.1-8B-Instruct")
LLAMA70 = facts("meta-llama/Llama-3.1-70B-Instruct")
QWEN7 = facts("Qwen/Qwen2.5-7B-Instruct")
QWQ_AWQ = facts("Qwen/QwQ-32B-Preview-AWQ")
MIXTRAL = facts("mistralai/Mixtral-8x7B-Instruct-v0.1")
DSV2 = facts("deepseek-ai/DeepSeek-V2-Lite-Chat")
MISTRAL01 = facts("mistralai/Mistral-7B-v0.1")
GEMMA9 = facts("google/gemma-2-9b-it")


# ---- KV cache -------------------------------------------------------------------------------

@pytest.mark.parametrize(("model", "tp", "expected"), [
    (LLAMA8, 1, 2 * 32 * 8 * 128 * 2),     # 131072 (vllm-facts §4.3)
    (LLAMA8, 8, 2 * 32 * 1 * 128 * 2),     # 16384
    (LLAMA70, 1, 2 * 80 * 8 * 128 * 2),    # 327680
    (QWEN7, 4, 2 * 28 * 1 * 128 * 2),      # 4 KV heads over 4 GPUs: one each
    (QWEN7, 8, 2 * 28 * 1 * 128 * 2),      # tp > KV heads: replicated, no further saving
])
def test_kv_bytes_per_token(model, tp, expected):
    assert memory.kv_bytes_per_token(model, tp, 1, 2) == expected


def test_kv_bytes_per_token_fp8_and_pipeline():
    assert memory.kv_bytes_per_token(LLAMA8, 1, 1, 1) == 65536
    assert memory.kv_bytes_per_token(LLAMA8, 1, 2, 2) == 65536  # 16 layers per stage
    assert memory.kv_bytes_per_token(LLAMA70, 1, 3, 2) == 27 * 8 * 2 * 128 * 2  # ceil(80 / 3) layers


def test_mla_kv_is_one_latent_per_layer_and_not_split_by_tp():
    assert memory.kv_bytes_per_token(DSV2, 1, 1, 2) == 27 * (512 + 64) * 2
    assert memory.kv_bytes_per_token(DSV2, 4, 1, 2) == 27 * (512 + 64) * 2
    assert memory.kv_bytes_per_token(DSV2, 1, 1, 1, "fp8_ds_mla") == 27 * 656


def test_kv_tokens_are_whole_blocks_of_16():
    assert memory.kv_tokens(GIB, 131072) == 8192
    assert memory.kv_tokens(GIB - 1, 131072) == 8176
    assert memory.kv_tokens(-5, 131072) == 0


def test_sliding_window_request_is_capped_at_window_plus_one_step():
    per_layer_token = 8 * 2 * 128 * 2  # Mistral-7B-v0.1: 8 KV heads × (K+V) × 128 × bf16
    window_blocks = -(-(4096 - 1 + 2048) // 16) + 1  # 385 blocks
    assert memory.kv_bytes_per_request(MISTRAL01, 1, 1, 2, 32768, 2048) == 32 * per_layer_token * 16 * window_blocks
    full = memory.kv_bytes_per_request(LLAMA8, 1, 1, 2, 32768, 2048)
    assert full == 131072 * 32768


def test_gemma2_alternates_window_and_global_layers():
    # Two KV cache groups of 21 layers; a window group claims cdiv(min(window − 1 + batch, len), 16)
    # + 1 blocks, one more than a full group when the window covers the whole length
    # (SlidingWindowSpec.max_admission_blocks_per_request, vllm/v1/kv_cache_interface.py).
    per_layer_token = 8 * 2 * 256 * 2
    blocks_full, blocks_window = 8192 // 16, -(-min(4095 + 8192, 8192) // 16) + 1
    expected = per_layer_token * 16 * 21 * (blocks_full + blocks_window)
    assert memory.kv_bytes_per_request(GEMMA9, 1, 1, 2, 8192, 8192) == expected


def test_largest_model_len_is_the_longest_request_that_fits():
    assert memory.largest_model_len(LLAMA8, 1, 1, 2, GIB, 8192) == 8192
    # Requests take whole 16-token blocks: 15 spare tokens are not a block, 16 are.
    assert memory.largest_model_len(LLAMA8, 1, 1, 2, GIB + 131072 * 15, 8192) == 8192
    assert memory.largest_model_len(LLAMA8, 1, 1, 2, GIB + 131072 * 16, 8192) == 8208
    assert memory.largest_model_len(LLAMA8, 1, 1, 2, 0, 8192) == 0
    assert memory.largest_model_len(LLAMA8, 1, 1, 2, 10 ** 15, 8192) == 131072  # capped at the model's limit


# ---- LoRA buffers (vllm-facts §3.3 table, MiB, ±1 for rounding) ------------------------------

TABLE = [(1, 16), (4, 16), (4, 64), (8, 64), (16, 128)]


@pytest.mark.parametrize(("model", "tp", "row"), [
    (LLAMA8, 1, [88, 352, 1409, 2819, 11274]),
    (LLAMA8, 2, [62, 248, 993, 1987, 7946]),
    (LLAMA8, 8, [43, 170, 681, 1363, 5450]),
    (LLAMA70, 4, [212, 848, 3393, 6787, 27146]),
    (LLAMA70, 8, [180, 721, 2883, 5767, 23066]),
    (QWEN7, 1, [77, 308, 1232, 2464, 9856]),
])
def test_lora_buffers_match_the_derived_table(model, tp, row):
    got = [memory.lora_bytes(model, tp, 1, n, r, 2) / MIB for n, r in TABLE]
    assert got == pytest.approx(row, abs=1)


def test_lora_llama8b_4_slots_rank_64_exact_bytes():
    per_layer = 7 * 4096 + 2 * 4096 + 2 * 1024 + 3 * 14336  # 7H + 2q + 2kv + 3I
    embeddings = 2 * 128256 + 2 * 4096
    assert memory.lora_bytes(LLAMA8, 1, 1, 4, 64, 2) == 4 * 64 * 2 * (32 * per_layer + embeddings)  # ≈ 1409 MiB


def test_fully_sharded_lora_splits_the_h_terms():
    per_layer = 7 * 4096 // 2 + 2 * 2048 + 2 * 512 + 3 * 7168
    assert memory.lora_bytes(LLAMA8, 2, 1, 4, 64, 2, fully_sharded=True) == 4 * 64 * 2 * (32 * per_layer + 2 * 128256 + 2 * 4096)


def test_target_modules_restrict_buffers_to_attention():
    # QwQ-32B, 16 slots at rank 64, q/k/v/o only: (3H + q + 2kv) + (q + H) per layer, no embeddings.
    per_layer = (3 * 5120 + 5120 + 2 * 1024) + (5120 + 5120)
    expected = 16 * 64 * 2 * 64 * per_layer
    assert expected == 4 * GIB
    assert memory.lora_bytes(QWQ_AWQ, 1, 1, 16, 64, 2, ["q_proj", "k_proj", "v_proj", "o_proj"]) == expected
    assert memory.lora_bytes(QWQ_AWQ, 1, 1, 16, 64, 2) == 16 * GIB  # every projection


def test_qwen2_has_no_embedding_lora_but_llama_does():
    assert "embed_tokens" not in memory.lora_targets(QWEN7, None)
    assert {"embed_tokens", "lm_head"} <= set(memory.lora_targets(LLAMA8, None))


def test_moe_lora_adds_expert_and_router_terms():
    H, inter, E = 4096, 14336, 8
    per_layer = (3 * H + H + 2 * 1024) + (H + H) + E * (3 * H + 3 * inter) + (H + E)
    expected = 1 * 16 * 2 * (32 * per_layer + 2 * 32000 + 2 * H)
    assert memory.lora_bytes(MIXTRAL, 1, 1, 1, 16, 2) == expected


def test_seed_formula_and_real_adapter_size():
    # Seed 001: "2 × 32 × 5120 × 64 × 4 × 2 bytes ≈ 167MB per rank-32 adapter"
    assert memory.seed_adapter_bytes(QWQ_AWQ, 32, 2, ["q_proj", "k_proj", "v_proj", "o_proj"]) == 167772160
    # A real rank-16 q/v adapter on Llama-3.1-8B: 32 layers × r × ((4096+4096) + (4096+1024)) × 2 bytes.
    assert memory.adapter_bytes(LLAMA8, 16, 2, ["q_proj", "v_proj"]) == 32 * 16 * 2 * (8192 + 5120)


# ---- weights ----------------------------------------------------------------------------------

def test_catalog_parameter_counts_match_the_shapes():
    for model_id in models.known_ids():
        f = facts(model_id)
        if f.num_parameters:
            assert memory.derived_parameters(f) == pytest.approx(f.num_parameters, rel=0.003), model_id


def test_llama8b_bf16_weights_at_tp1_and_tp2():
    rope = 131072 * 128 * 2  # cos/sin cache, [max_position_embeddings, head_dim] bf16, on every GPU
    assert memory.rope_cache_bytes(LLAMA8, 2) == rope
    assert memory.weight_bytes(LLAMA8, 1, 1, 2) == 8030261248 * 2 + rope
    linear = 32 * (4096 * 2048 + 2 * 4096 * 512 + 2048 * 4096 + 3 * 4096 * 7168)
    other = 32 * 2 * 4096 + 2 * (128256 // 2) * 4096 + 4096
    # Per rank embed_tokens and lm_head are 501 MiB each: a 502 MiB segment, 1 MiB not split off
    # (planner/allocator.py), so the allocator counts 1 MiB more for each.
    slack = 2 * (1 << 20)
    assert memory.weight_bytes(LLAMA8, 2, 1, 2) == (linear + other) * 2 + rope + slack


def test_awq_weights_keep_embeddings_in_half_precision():
    linear = 64 * (5120 * 5120 + 2 * 5120 * 1024 + 5120 * 5120 + 3 * 5120 * 27648)
    other = 64 * (5120 + 2 * 1024 + 2 * 5120) + 2 * 152064 * 5120 + 5120
    rope = 32768 * 128 * 2
    expected = round(linear * (0.5 + 2.5 / 128) + other * 2) + rope
    assert memory.weight_bytes(QWQ_AWQ, 1, 1, 2, "awq", 128) == expected
    assert expected / GIB == pytest.approx(18.0, abs=0.05)


def test_fp8_weights_are_one_byte_per_linear_weight():
    linear = 32 * (4096 * 4096 + 2 * 4096 * 1024 + 4096 * 4096 + 3 * 4096 * 14336)
    other = 32 * 2 * 4096 + 2 * 128256 * 4096 + 4096
    assert memory.weight_bytes(LLAMA8, 1, 1, 2, "fp8") == linear + other * 2 + 131072 * 128 * 2


def test_rope_cache_matches_the_0_19_weights_log_and_is_absent_with_learned_positions():
    # vLLM 0.19 logged "Model loading took 14.99 GiB" for Llama-3.1-8B bf16 (tests/data/calibration.yaml):
    # parameters alone give 14.96 GiB, the 32 MiB cos/sin cache makes up the difference.
    assert round(memory.weight_bytes(LLAMA8, 1, 1, 2) / GIB, 2) == 14.99
    gpt2 = facts("microsoft/DialoGPT-medium")
    assert memory.rope_cache_bytes(gpt2, 2) == 0


def test_pipeline_stage_holds_its_layers_and_one_embedding():
    stage = memory.params_per_gpu(LLAMA8, 1, 2)
    assert stage.linear == 16 * (4096 * 4096 * 2 + 2 * 4096 * 1024 + 3 * 4096 * 14336)
    assert stage.other == 16 * 2 * 4096 + 128256 * 4096 + 4096


# ---- measured overheads ------------------------------------------------------------------------

def test_activation_peak_fit():
    # 0.19 GiB × (8192 / 8192) + 3.54 × 1024 sequences × 128256 vocab × 4 bytes
    logits = 1024 * 128256 * 4
    expected = 0.19 * GIB + 3.54 * logits
    assert memory.activation_bytes(LLAMA8, 8192, 1024, 1, "0.33.0") == round(expected)
    assert memory.activation_bytes(LLAMA8, 8192, 1024, 2, "0.33.0") == pytest.approx(expected * 0.57, abs=2)
    moe = 0.60 * GIB * 2048 / 8192 + 3.54 * 256 * 32000 * 4
    assert memory.activation_bytes(MIXTRAL, 2048, 256, 1, "0.33.0") == round(moe)


def test_the_sampler_share_follows_the_release_top_k_top_p_code():
    logits = 1024 * 128256 * 4
    # 0.8 to 0.16 sorted the whole vocabulary (values, int64 indices, cumsum, scatter): 9.40 logits tensors.
    sorted_era = 0.19 * GIB + 9.40 * logits
    assert memory.activation_bytes(LLAMA8, 8192, 1024, 1, "0.16.0") == pytest.approx(sorted_era, abs=2)
    assert memory.activation_bytes(LLAMA8, 8192, 1024, 1, "0.17.0") == round(0.19 * GIB + 3.54 * logits)
    # The V0 engine (< 0.8) profiles with its own runner: the larger of the eager forward and the
    # sort-era sampler beside the last hidden states (1024 sequences: the sampler).
    v0_sampler = 9.40 * logits + 8192 * 4096 * 2
    assert memory.activation_bytes(LLAMA8, 8192, 1024, 1, "0.6.4") == pytest.approx(v0_sampler, abs=2)
    assert memory.sampler_bytes(LLAMA8, 1024, "0.16.0") == round(9.40 * logits)


def test_cuda_graphs():
    # Non-torch memory and the CUDA context: tests/unit/test_planner_nontorch.py.
    # FULL_AND_PIECEWISE (0.11+), 51 capture sizes up to min(2 × 1024, 512): the first FULL capture
    # holds FlashAttention's split-KV accumulator (32 splits × 512 × 32 heads × 128 × 4 B = 256 MiB),
    # then 50 more graphs per mode at 0.2 MiB per layer (vLLM's DEBUG line for this model:
    # "260.00 MiB first-capture + (51-1) × 6.00 MiB per-graph").
    graphs = 256 * MIB + 2 * 50 * 32 * round(0.2 * MIB)
    assert memory.cudagraph_bytes(LLAMA8, 1, lora=False, enforce_eager=False) == graphs
    assert memory.cudagraph_bytes(LLAMA8, 1, lora=True, enforce_eager=False) == round(graphs * 1.47)
    assert memory.cudagraph_bytes(LLAMA8, 1, lora=True, enforce_eager=True) == 0


def test_cuda_graph_capture_sizes_follow_the_release():
    v1 = memory.cudagraph_capture_sizes(LLAMA8, 1024, 8192, "0.33.0")
    assert v1[:4] == [1, 2, 4, 8] and v1[-3:] == [480, 496, 512] and len(v1) == 51
    assert memory.cudagraph_capture_sizes(LLAMA8, 128, 8192, "0.33.0")[-1] == 256  # 2 × max_num_seqs
    assert memory.cudagraph_capture_sizes(LLAMA8, 1024, 8192, "0.9.0")[-2:] == [504, 512]  # step 8 throughout
    assert memory.cudagraph_capture_sizes(LLAMA8, 256, 8192, "0.6.4")[-1] == 256  # V0: up to max_num_seqs
    assert memory.cudagraph_capture_sizes(LLAMA8, 1024, 64, "0.33.0")[-1] == 64  # never above batched tokens


def test_cudagraphs_count_against_the_budget_from_0_21():
    assert memory.cudagraphs_in_budget("0.33.0")
    assert memory.cudagraphs_in_budget("0.21")
    assert not memory.cudagraphs_in_budget("0.19.0")


def test_budget_is_the_ceiling_of_total_times_utilization():
    h100 = gpus.resolve(spec.GpuGroup(type="H100-80GB"))
    assert memory.budget_bytes(h100.total_bytes, 0.92) == -(-h100.total_bytes * 92 // 100)


def test_an_inline_parameter_count_is_trusted_even_far_from_the_shapes():
    # phi-2 (config.json of microsoft/phi-2): a two-matrix fc1/fc2 MLP, which an unknown family's
    # shapes count as three; its published 2.78 B parameters correct the weights.
    # (An id and model_type the catalog does not know, so nothing says the MLP is plain.)
    arch = {"model_type": "phi-fork", "hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 32,
            "num_attention_heads": 32, "vocab_size": 51200, "max_position_embeddings": 2048}
    shapes_only = models.resolve(spec.BaseModelSpec(id="acme/phi-2-fork", architecture=arch))
    counted = models.resolve(spec.BaseModelSpec(id="acme/phi-2-fork", architecture={**arch, "num_parameters": 2779683840}))
    assert memory.params_per_gpu(counted, 1, 1).total == pytest.approx(2779683840, rel=0.002)
    assert memory.params_per_gpu(shapes_only, 1, 1).total > 1.2 * 2779683840
    # ...and the derived count stays reported beside the published one.
    counts = memory.parameter_counts(counted)
    assert counts["published"] == 2779683840 and counts["derived"] > 1.2 * 2779683840 and counts["layer_scale"] < 0.8


def test_the_v0_profile_peak_is_its_eager_forward_when_the_batch_is_long():
    # vllm-project/vllm#10517 (calibration): 0.6.4, Llama-3.1-8B, max_model_len 20,000 without chunked
    # prefill, so V0 profiles 20,000 tokens: gate_up (2 × 14,336) and the activation (14,336) plus three
    # hidden-sized tensors per token, 2 bytes each; the log's peak_torch − weights was 2.07 GiB.
    forward = 20000 * (3 * 14336 + 3 * 4096) * 2
    assert memory.v0_forward_bytes(LLAMA8, 20000, 1, 2) == forward
    assert memory.activation_bytes(LLAMA8, 20000, 256, 1, "0.6.4") == forward
    assert abs(forward / GIB - 2.07) < 0.02
    # Tensor parallel splits the MLP, not the hidden tensors.
    assert memory.v0_forward_bytes(LLAMA8, 20000, 2, 2) == 20000 * (3 * 14336 / 2 + 3 * 4096) * 2
    # A short batch: the sampler's sort (256 rows of 128,256 logits) is the larger peak.
    sampler = 9.40 * 256 * 128256 * 4 + 8192 * 4096 * 2
    assert memory.activation_bytes(LLAMA8, 8192, 256, 1, "0.4.1") == round(sampler)


def test_mxfp4_experts_are_padded_to_the_kernel_the_device_gets():
    # mxfp4_round_up_hidden_size_and_intermediate_size (fused_moe/oracle/mxfp4.py, vLLM 0.33):
    # Marlin before Hopper pads hidden to 256 and the per-rank intermediate to 128, Hopper's Triton
    # kernels the intermediate to 64. gpt-oss-120b: hidden 2880, expert intermediate 2880.
    oss = facts("openai/gpt-oss-120b")
    assert memory.mxfp4_expert_padding(oss, 4, (8, 0)) == pytest.approx(3072 * 768 / (2880 * 720))  # A100, tp 4
    assert memory.mxfp4_expert_padding(oss, 1, (9, 0)) == 1.0  # H100: 2880 is a multiple of 64
    assert memory.mxfp4_expert_padding(oss, 1, (10, 0)) == pytest.approx(3072 * 2944 / (2880 * 2880))
    assert memory.mxfp4_expert_padding(oss, 1, None) == 1.0
    assert memory.mxfp4_expert_padding(LLAMA8, 1, (8, 0)) == 1.0  # dense: nothing to pad
    plain = memory.weight_bytes(oss, 4, 1, 2, "mxfp4")
    padded = memory.weight_bytes(oss, 4, 1, 2, "mxfp4", compute_capability=(8, 0))
    assert padded > plain * 1.10  # the experts are nearly all of gpt-oss's weights


def test_hopper_triton_mxfp4_keeps_the_checkpoint_scales_until_0_26():
    # process_weights_after_loading of 0.14.0 (quantization/mxfp4.py) and 0.19.0
    # (fused_moe/oracle/mxfp4.py) swizzle values and scales for the Triton kernels and delete only
    # the old values; 0.26.0 deletes the old scales too. Biases go to float32 in all of them.
    oss = facts("openai/gpt-oss-120b")  # 36 MoE layers of 128 experts, hidden 2880, expert width 2880
    per_layer_bias = 128 * (2 * 2880 + 2880) * 2  # bf16 → fp32 adds 2 bytes per bias element
    per_layer_scales = 128 * 3 * 2880 * 2880 // 32
    assert memory.mxfp4_triton_residue_bytes(oss, 1, (9, 0), "mxfp4", (0, 14, 1), 2) == \
        36 * (per_layer_bias + per_layer_scales)  # 3.41 GiB: the gap to a 0.14.1 H100 log's 64.38 GiB
    assert memory.mxfp4_triton_residue_bytes(oss, 1, (9, 0), "mxfp4", (0, 26, 0), 2) == 36 * per_layer_bias
    # Only Hopper runs the Triton kernels; Marlin (A100) and FlashInfer (Blackwell) convert in place.
    assert memory.mxfp4_triton_residue_bytes(oss, 1, (8, 0), "mxfp4", (0, 14, 1), 2) == 0
    assert memory.mxfp4_triton_residue_bytes(oss, 1, (10, 0), "mxfp4", (0, 14, 1), 2) == 0
    assert memory.mxfp4_triton_residue_bytes(MIXTRAL, 1, (9, 0), "awq", (0, 14, 1), 2) == 0
    # Tensor parallel slices each expert's width: 2880 / 2 = 1440, padded to 1472 (a multiple of 64).
    assert memory.mxfp4_triton_residue_bytes(oss, 2, (9, 0), "mxfp4", (0, 19, 0), 2) == \
        36 * (128 * (2 * 1472 + 2880) * 2 + 128 * 3 * 1472 * 2880 // 32)
    base = memory.weight_bytes(oss, 1, 1, 2, "mxfp4", compute_capability=(9, 0))
    assert memory.weight_bytes(oss, 1, 1, 2, "mxfp4", compute_capability=(9, 0), vllm_version=(0, 14, 1)) == \
        base + 36 * (per_layer_bias + per_layer_scales)


def test_the_weights_term_names_the_triton_residue_it_counts():
    document = {"name": "o", "base_model": {"id": "openai/gpt-oss-120b", "max_model_len": 8192},
                "gpus": [{"type": "H100-80GB", "count": 1}], "servers": [{"name": "a"}]}
    terms = {}
    for version in ("0.14.1", "0.26.0"):
        plan = report.plan_fleet(spec.FleetSpec.model_validate({**document, "runtime": {"vllm_version": version}}))
        terms[version] = next(t for t in plan.servers[0].replicas[0].budget.terms if t.term == "weights")
    assert "+3.41 GiB left by the Triton MXFP4 conversion" in terms["0.14.1"].source
    assert "+0.07 GiB left by the Triton MXFP4 conversion" in terms["0.26.0"].source  # biases only
    assert terms["0.14.1"].bytes - terms["0.26.0"].bytes == 36 * (128 * 3 * 2880 * 2880 // 32)
