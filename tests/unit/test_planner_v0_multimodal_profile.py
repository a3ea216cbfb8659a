"""V0's multimodal profile run (issue #18, gpustack#1800). Every expectation is worked by hand from
vLLM's code, read in the 0.7.3, 0.8.0, 0.8.2, 0.8.3, 0.8.4, 0.9.2 and 0.10.1 wheels:

- ModelRunner._dummy_run (vllm/worker/model_runner.py): max_num_seqs = min(max_num_seqs,
  max_num_batched_tokens // mm_registry.get_max_multimodal_tokens), at least 1; each dummy sequence
  gets max_num_batched_tokens // max_num_seqs tokens (+1 for the first remainder ones);
- MultiModalRegistry.get_max_multimodal_tokens = Σ limit × max tokens per item (computed at
  max_model_len), V0's limit 1 per modality (get_default_limit_per_prompt: `999 if VLLM_USE_V1 else 1`);
- MultiModalProfiler.get_decoder_dummy_data (multimodal/profiling.py): from 0.8.3 a dummy prompt longer
  than its sequence only warns and is kept whole; up to 0.8.2 it became text only (seq_len tokens);
- Qwen2VLProcessingInfo / Qwen2VLDummyInputsBuilder (qwen2_vl.py): one image and one video at the
  image processor's max_pixels: smart_resize(9999999², factor 28, max_pixels 12845056) = 3584², grid
  256² = 65536 patches, 16384 tokens; the video gets the most frames whose tokens fit in seq_len − 16384,
  at most 16 and at least 1, padded to temporal_patch_size 2;
- pixel values: 3 × 2 × 14² = 1176 float32 per patch, twice on the GPU (the kwargs' batched tensor and
  the `torch.concat(list(mm_input))` copy of Qwen2_5_VLForConditionalGeneration._validate_and_reshape_mm_tensor).
"""

from __future__ import annotations

import pytest

from fleetspec.catalog import models
from fleetspec.planner import log_score, memory, report, startup_log
from fleetspec.spec import models as spec

VL7B = "Qwen/Qwen2.5-VL-7B-Instruct"
VL3B = "Qwen/Qwen2.5-VL-3B-Instruct"
PIXEL_BYTES_PER_PATCH = 3 * 2 * 14 * 14 * 4  # float32


def facts(model_id: str) -> models.ModelFacts:
    return models.resolve(spec.BaseModelSpec(id=model_id))


def test_catalog_carries_the_processor_facts():
    for model_id in (VL7B, VL3B):
        f = facts(model_id)
        v = f.architecture.vision_config
        assert f.mm_dummy == "qwen2_vl"
        assert (v.max_pixels, v.spatial_merge_size, v.temporal_patch_size, v.patch_size) == (12845056, 2, 2, 14)


def test_text_model_has_no_multimodal_profile():
    assert memory.v0_mm_profile(facts("Qwen/Qwen2.5-7B-Instruct"), 8192, 256, 8192, "0.8.4") is None


def test_gpustack_1800_setting_runs_32768_tokens_in_one_sequence():
    # max_model_len 8192 → max_num_batched_tokens 8192 (V0, no chunked prefill for multimodal);
    # 8192 // (16384 + 16384) = 0 → 1 sequence of 8192 tokens whose dummy prompt is 32768 tokens.
    mm = memory.v0_mm_profile(facts(VL7B), 8192, 256, 8192, "0.8.4")
    assert (mm.seqs, mm.tokens, mm.largest_item_patches) == (1, 32768, 65536)
    assert mm.pixel_bytes == 2 * 2 * 65536 * PIXEL_BYTES_PER_PATCH  # image + video, two copies


def test_before_0_8_3_the_too_long_dummy_prompt_is_text_only():
    mm = memory.v0_mm_profile(facts(VL7B), 8192, 256, 8192, "0.8.2")
    assert (mm.seqs, mm.tokens, mm.pixel_bytes, mm.largest_item_patches) == (1, 8192, 0, 0)


def test_long_context_gives_the_video_more_frames():
    # max_model_len 65536: the video may take 65536 − 16384 = 49152 tokens → 6 frames (3 temporal
    # patches, 49152 tokens, 196608 patches); 65536 // 65536 = 1 sequence, a prompt of 65536 tokens.
    mm = memory.v0_mm_profile(facts(VL7B), 65536, 256, 65536, "0.8.4")
    assert (mm.seqs, mm.tokens, mm.largest_item_patches) == (1, 65536, 196608)
    assert mm.pixel_bytes == 2 * (65536 + 196608) * PIXEL_BYTES_PER_PATCH
    # ...and when the dummy fits, 0.8.2 keeps its multimodal data too.
    assert memory.v0_mm_profile(facts(VL7B), 65536, 256, 65536, "0.8.2") == mm


def test_several_sequences_when_the_batch_holds_them():
    # max_num_batched_tokens 65536, max_model_len 8192: 65536 // 32768 = 2 sequences of 32768 tokens;
    # each one's video may take 32768 − 16384 tokens → 2 frames, one temporal patch: 16384 tokens.
    mm = memory.v0_mm_profile(facts(VL7B), 65536, 256, 8192, "0.8.4")
    assert (mm.seqs, mm.tokens, mm.largest_item_patches) == (2, 65536, 65536)
    assert mm.pixel_bytes == 2 * 2 * 2 * 65536 * PIXEL_BYTES_PER_PATCH


def test_activation_of_the_gpustack_1800_setting():
    f = facts(VL7B)
    # Language model, eager: 32768 tokens × (gate_up + act 3 × 18944 + 3 hidden copies × 3584) × 2 B.
    forward = 32768 * (3 * 18944 + 3 * 3584) * 2
    pixels = 2 * 2 * 65536 * PIXEL_BYTES_PER_PATCH
    # Vision block over 65536 patches: input + norm (2 × 1280) beside its attention step (all-gathered
    # qkv 3 × 1280 and q/k/v 3 × 1280 in bf16, q in float32 plus three float32 temporaries: 4 × 1280 × 4 B)
    # and the bf16 copy of the item's pixel values (1176 × 2 B); below the language model here.
    vision = 65536 * (2 * 1280 * 2 + (6 * 1280 * 2 + 4 * 1280 * 4) + 1176 * 2)
    assert memory.v0_vision_step_bytes(f, 65536, 1, 2) == vision
    assert vision + 32768 * 3584 * 2 < forward
    got = memory.activation_bytes(f, 8192, 256, 1, "0.8.4", v0=True, max_model_len=8192)
    assert got == pixels + forward
    assert got / (1 << 30) == pytest.approx(5.273, abs=1e-3)


def test_v1_and_text_models_are_unchanged():
    f = facts(VL7B)
    v1 = memory.activation_bytes(f, 8192, 256, 1, "0.8.4", v0=False, max_model_len=8192)
    assert v1 == memory.activation_bytes(f, 8192, 256, 1, "0.8.4", v0=False)
    text = facts("Qwen/Qwen2.5-7B-Instruct")
    assert memory.activation_bytes(text, 8192, 256, 1, "0.8.4", v0=True, max_model_len=8192) == \
        memory.activation_bytes(text, 8192, 256, 1, "0.8.4", v0=True)


def _plan(max_model_len: int):
    case = {"model": VL7B, "gpu": "RTX-3090", "max_model_len": max_model_len, "vllm_version": "0.8.4",
            "env": {"VLLM_USE_V1": "0"}}
    return report.plan_fleet(log_score.fleet_for(case, startup_log.parse("")))


def test_plan_term_and_kv_too_small_finding():
    plan = _plan(8192)
    b = plan.servers[0].replicas[0].budget
    term = next(t for t in b.terms if t.term == "activation")
    assert "multimodal" in term.source and "32768 tokens" in term.source
    assert term.bytes == b.activation and term.confidence == "estimated"
    # 21.22 GiB budget − 15.48 GiB weights − 5.27 GiB profile leave 0.47 GiB: 8848 tokens, still ≥ 8192.
    assert b.kv_tokens == 8848 and plan.fits
    # At 12288 tokens the same replica cannot hold one request: the existing finding fires.
    plan = _plan(12288)
    assert not plan.fits
    assert any(f.code == "kv-cache-too-small" for f in plan.findings)
