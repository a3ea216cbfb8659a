"""Pure parts of the vLLM admin client: reading `vllm:lora_requests_info` and the models view."""

from __future__ import annotations

from fleetspec.engine_api import contract

METRICS = """\
# HELP vllm:lora_requests_info Running stats on lora requests.
# TYPE vllm:lora_requests_info gauge
vllm:lora_requests_info{max_lora="4",running_lora_adapters="",waiting_lora_adapters=""} 1.7000000e+09
vllm:lora_requests_info{max_lora="4",running_lora_adapters="sql@1.0.0,py",waiting_lora_adapters="chat"} 1.7000005e+09
vllm:num_requests_running{engine="0",model_name="m"} 2.0
"""


def test_latest_lora_requests_info_sample_wins():
    assert contract.lora_requests_info(METRICS) == contract.LoraRequestsInfo(
        max_lora=4, running=("sql@1.0.0", "py"), waiting=("chat",))


def test_no_lora_metric_means_lora_is_off():
    assert contract.lora_requests_info('vllm:num_requests_running{engine="0"} 0.0\n') is None


def test_label_values_are_unescaped_and_order_does_not_matter():
    line = 'vllm:lora_requests_info{waiting_lora_adapters="",running_lora_adapters="a\\"b,c",max_lora="2"} 5.0'
    assert contract.lora_requests_info(line) == contract.LoraRequestsInfo(2, ('a"b', "c"), ())


def test_models_view_serves_by_name_and_path():
    view = contract.ModelsView(base=("main",), root="org/model", max_model_len=4096,
                                 adapters={"sql@1": "/adapters/sql/1"}, parents={"sql@1": "main"})
    assert view.serves("sql@1") and view.serves("sql@1", "/adapters/sql/1")
    assert not view.serves("sql@1", "/adapters/sql/2") and not view.serves("main")
