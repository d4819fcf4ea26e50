"""`--help-config` and `--schema` on `curate run`, `train run` and `evalsuite run`, and `curate stages`: the
reference a user reads comes from the config models, through the command line as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from curate.config import CurateConfig
from curate.confighelp import walk_models
from curate.stages import all_stages
from evalsuite.suite import SuiteConfig
from train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
CLIS = [("curate.cli", ["run"], CurateConfig), ("train.cli", ["run"], TrainConfig), ("evalsuite.cli", ["run"], SuiteConfig)]


def _cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def _words(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize(("module", "command", "model"), CLIS, ids=[c[0] for c in CLIS])
def test_help_config_prints_every_field_with_its_description(module, command, model):
    # no CONFIG argument: the option answers before the command asks for one
    result = _cli(module, *command, "--help-config")
    assert result.returncode == 0, result.stderr
    flat = _words(result.stdout)
    from curate.config import StageSpec

    for sub in walk_models(model):
        if sub is StageSpec:  # a stage list is printed as every registered stage's params (next test)
            continue
        for name, info in sub.model_fields.items():
            if info.exclude:
                continue
            assert f"{name}: " in result.stdout, f"{sub.__name__}.{name} missing from --help-config"
            assert _words(info.description) in flat, f"{sub.__name__}.{name}: description not printed"


def test_curate_help_config_nests_keys_and_lists_every_stage():
    out = _cli("curate.cli", "run", "--help-config").stdout
    assert 'splits.train: float = 0.9  (>= 0; <= 1)' in out
    assert "inputs[].mapping: " in out and "name: str  (required; matches " in out
    for stage in all_stages():
        assert f"stages[].{stage}: " in out
    assert 'stages[].exact_dedup.keep: \'first\' | \'last\' | \'longest\' = "first"' in out


@pytest.mark.parametrize(("module", "command", "model"), CLIS, ids=[c[0] for c in CLIS])
def test_schema_is_the_models_json_schema(module, command, model):
    result = _cli(module, *command, "--schema")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == model.model_json_schema()


@pytest.mark.parametrize("config", ["configs/quickstart.yaml", "configs/train_quickstart.yaml", "configs/eval_quickstart.yaml",
                                    "configs/eval_scored_gsm8k.yaml"])
def test_the_shipped_configs_validate_against_the_schema(config):
    model = {"quickstart": CurateConfig, "train_quickstart": TrainConfig}.get(Path(config).stem, SuiteConfig)
    schema = model.model_json_schema()
    jsonschema.validate(yaml.safe_load((ROOT / config).read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):  # a stage name curate does not know, or a typo'd key
        jsonschema.validate({"name": "x", "inputs": [{"path": "a"}], "stages": ["exact_dedupe"]}, CurateConfig.model_json_schema())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "x", "inputs": [{"path": "a"}], "stages": [{"exact_dedup": {"keep": "oldest"}}]},
                            CurateConfig.model_json_schema())


def test_curate_stages_prints_each_parameter_with_default_and_description():
    result = _cli("curate.cli", "stages")
    assert result.returncode == 0, result.stderr
    flat = _words(result.stdout)
    for stage, cls in all_stages().items():
        for name, info in cls.Params.model_fields.items():
            assert _words(info.description) in flat, f"{stage}.{name}: description not printed"
    assert '    keep: \'first\' | \'last\' | \'longest\' = "first"' in result.stdout
    assert "    threshold: float = 0.7" in result.stdout  # minhash_dedup's default, as YAML would spell it
