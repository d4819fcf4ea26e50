"""The train config is validated before any work starts, with every bad key named."""

from __future__ import annotations

import pytest

from train.config import TrainConfigError, load_train_config, parse_train_config


def test_defaults_and_relative_paths(tmp_path):
    (tmp_path / "t.yaml").write_text("name: sft\ndata:\n  - path: data/train.jsonl\n  - path: general.jsonl\n    weight: 0.15\n")
    cfg = load_train_config(tmp_path / "t.yaml")
    assert cfg.method.kind == "qlora" and cfg.method.target_modules == "all-linear" and not cfg.train_on_inputs
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
    ],
)
def test_bad_configs_name_the_key(data, message):
    with pytest.raises(TrainConfigError, match=message.replace(".", r"\.")):
        parse_train_config(data, source="t.yaml")
