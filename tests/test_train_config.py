"""The train config is validated before any work starts, with every bad key named."""

from __future__ import annotations

import pytest

from train.config import TrainConfigError, load_train_config, parse_train_config


def test_defaults_and_relative_paths(tmp_path):
    (tmp_path / "t.yaml").write_text("name: sft\ndata:\n  - path: data/train.jsonl\n  - path: general.jsonl\n    weight: 0.15\n")
    cfg = load_train_config(tmp_path / "t.yaml")
    assert cfg.method.kind == "qlora" and cfg.method.target_modules == "all-linear" and not cfg.train_on_inputs
    assert cfg.truncation == "turn"  # no half answer is trained unless asked for
    assert cfg.output_path == (tmp_path / "runs" / "sft").resolve()
    assert cfg.resolve(cfg.data[0].path) == (tmp_path / "data" / "train.jsonl").resolve()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "x", "data": [{"path": "a", "weight": 0.7}, {"path": "b", "weight": 0.5}]}, "add up to 1.2"),
        ({"name": "x", "data": [{"path": "a", "weight": 0.5}, {"path": "b", "weight": 0.4}]}, "not 1"),
        ({"name": "x", "data": [{"path": "a"}], "method": {"kind": "qlorra"}}, "method.kind"),
        ({"name": "x", "data": [{"path": "a"}], "optim": {"lrr": 1e-4}}, "optim.lrr"),
        ({"name": "x", "data": []}, "data"),
        ({"name": "x", "data": [{"path": "a"}], "truncation": "middle"}, "truncation"),
    ],
)
def test_bad_configs_name_the_key(data, message):
    with pytest.raises(TrainConfigError, match=message.replace(".", r"\.")):
        parse_train_config(data, source="t.yaml")


def test_a_mapping_implies_shape_mapped_in_train_sources_and_eval_tasks(tmp_path):
    # left auto, the mapping was ignored and every GSM8K record skipped; now both configs read the mapped columns
    from evalsuite.suite import load_suite

    gsm8k = "../shared/data/gsm8k/test.jsonl"
    mapping = {"user": "question", "assistant": "answer"}
    cfg = parse_train_config({"name": "t", "data": [{"path": gsm8k, "mapping": mapping}]})
    assert cfg.data[0].shape == "mapped"
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"name: s\ntasks:\n  - name: g\n    path: {gsm8k}\n    mapping: {{user: question, assistant: answer}}\n"
                     "    metrics: [exact_match]\n")
    assert load_suite(suite).tasks[0].shape == "mapped"
    with pytest.raises(TrainConfigError, match="needs a `mapping`"):
        parse_train_config({"name": "t", "data": [{"path": gsm8k, "shape": "mapped"}]})
