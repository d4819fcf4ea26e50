"""curate.registry: registering, did-you-mean, duplicates, lazy built-ins, ``module:Attr`` specs, and entry points
found by importlib.metadata in a ``*.dist-info`` folder written here and put on the import path (the real
mechanism pip-installed packages use); and that every older registry API is a view of it."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from curate.registry import Registry, RegistryError, UnknownNameError, is_spec


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_register_both_ways_and_did_you_mean():
    reg: Registry = Registry("widget")

    @reg.register
    class Sprocket:
        name = "sprocket"

    @reg.register("flange")
    def make_flange():
        return "flange"

    assert reg.get("sprocket") is Sprocket and reg.get("flange") is make_flange and make_flange() == "flange"
    assert reg.names() == ["flange", "sprocket"] and "sprocket" in reg and len(reg) == 2
    with pytest.raises(UnknownNameError) as exc:
        reg.get("sprockett")
    assert isinstance(exc.value, ValueError)
    assert str(exc.value) == "unknown widget 'sprockett' (did you mean 'sprocket'?); known widgets: flange, sprocket"
    with pytest.raises(UnknownNameError, match=r"^unknown widget 'zzz'; known widgets: flange, sprocket$"):
        reg.get("zzz")  # nothing close: no hint, still every name


def test_a_name_registered_twice():
    reg: Registry = Registry("widget")

    class One:
        name = "cog"

    class Two:
        name = "cog"

    reg.register(One)
    reg.register(One)  # the same object again: nothing happens
    with pytest.raises(RegistryError, match=r"widget 'cog' is already registered \(by .*One\); .*Two registers it again"):
        reg.register(Two)
    assert reg.get("cog") is One


def test_builtins_load_on_the_first_lookup(tmp_path, monkeypatch):
    _write(tmp_path, "fwb_gadget_reg.py", """
        from curate.registry import Registry
        REG = Registry("gadget", builtins=("fwb_gadget_builtin",))
    """)
    _write(tmp_path, "fwb_gadget_builtin.py", """
        from fwb_gadget_reg import REG

        @REG.register("lever")
        def lever():
            return 1
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    from fwb_gadget_reg import REG  # type: ignore[import-not-found]

    assert "fwb_gadget_builtin" not in sys.modules  # not imported until a name is asked for
    assert REG.get("lever")() == 1 and "fwb_gadget_builtin" in sys.modules


def _callable(name: str, obj):
    if not callable(obj):
        raise RegistryError(f"{obj!r} is not callable")
    return obj


def test_specs_import_the_users_module(tmp_path):
    reg: Registry = Registry("tool", coerce=_callable)
    _write(tmp_path, "sub/fwb_tools_file.py", """
        def hammer():
            return "bang"

        NOT_A_TOOL = 3
    """)
    name, fn = reg.lookup("sub/fwb_tools_file.py:hammer", tmp_path)  # a file, relative to the given folder
    assert name == "hammer" and fn() == "bang" and reg.get("hammer") is fn
    assert reg.lookup("sub/fwb_tools_file.py:hammer", tmp_path) == (name, fn)  # once registered, found again
    with pytest.raises(RegistryError) as exc:
        reg.lookup("sub/fwb_tools_file.py:hamer", tmp_path)
    assert str(exc.value) == "tool 'sub/fwb_tools_file.py:hamer': sub/fwb_tools_file.py has no attribute 'hamer' (did you mean 'hammer'?)"
    with pytest.raises(RegistryError, match="3 is not callable"):
        reg.lookup("sub/fwb_tools_file.py:NOT_A_TOOL", tmp_path)
    with pytest.raises(RegistryError, match=r"no module 'fwb_no_such_module'"):
        reg.lookup("fwb_no_such_module:thing", tmp_path)
    assert is_spec("pkg.mod:Attr") and is_spec("./a/b.py:Attr") and not is_spec("exact_dedup") and not is_spec("a:")


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """A folder on the import path holding an installed distribution: its dist-info with entry points, its modules."""
    site = tmp_path / "site"
    _write(site, "fwb_ep_demo-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: fwb-ep-demo\nVersion: 1.0\n")
    _write(site, "fwb_ep_demo-1.0.dist-info/entry_points.txt", """
        [finetune_workbench.gizmos]
        spanner = fwb_ep_tools:Spanner
        more = fwb_ep_more

        [finetune_workbench.stages]
        ep_demo_stage = fwb_ep_stage:DemoStage

        [finetune_workbench.doohickeys]
        broken = fwb_ep_missing:Thing
    """)
    _write(site, "fwb_ep_registry.py", """
        from curate.registry import Registry
        GIZMOS = Registry("gizmo")
    """)
    _write(site, "fwb_ep_tools.py", """
        class Spanner:
            name = "spanner"
    """)
    _write(site, "fwb_ep_more.py", """
        from fwb_ep_registry import GIZMOS

        @GIZMOS.register("wrench")
        class Wrench:
            pass
    """)
    _write(site, "fwb_ep_stage.py", """
        import polars as pl
        from curate.stages import RecordStage

        class DemoStage(RecordStage):
            name = "ep_demo_stage"

            def evaluate(self, batch):
                return batch.with_columns(reason=pl.lit(None, pl.Utf8), detail=pl.lit(None, pl.Utf8))
    """)
    monkeypatch.syspath_prepend(str(site))
    return site


def test_entry_points_of_an_installed_package(installed):
    from fwb_ep_registry import GIZMOS  # type: ignore[import-not-found]

    assert GIZMOS.group == "finetune_workbench.gizmos"
    assert GIZMOS.names() == ["spanner", "wrench"]  # one by its attribute, one registered by its module's import
    assert GIZMOS.get("spanner").__module__ == "fwb_ep_tools"


def test_a_package_installed_after_the_first_lookup_is_found(installed):
    from curate.stages import STAGES, get_stage

    assert STAGES.names()  # loaded long ago in a real process; a miss reads the entry points again
    try:
        cls = get_stage("ep_demo_stage")
        assert cls.__module__ == "fwb_ep_stage" and cls.name == "ep_demo_stage"
    finally:
        STAGES.remove("ep_demo_stage")


def test_a_broken_entry_point_is_one_line(installed):
    reg: Registry = Registry("doohickey")
    with pytest.raises(RegistryError) as exc:
        reg.get("anything")
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith("entry point broken = 'fwb_ep_missing:Thing' (finetune_workbench.doohickeys, package fwb-ep-demo) cannot be loaded")
    assert "ModuleNotFoundError" in message


def test_the_older_registry_apis_are_views_of_one_mechanism():
    from curate.shapes import SHAPES
    from curate.stages import REGISTRY, STAGES, UnknownStageError, get_stage
    from evalsuite.judge import JUDGE_BACKENDS, LocalJudge, OpenAIJudge
    from evalsuite.metrics import EXTRACTORS, METRICS, UnknownMetric, get_metric
    from evalsuite.metrics.base import METRIC_REGISTRY
    from evalsuite.metrics.extract import EXTRACTOR_REGISTRY
    from evalsuite.probes import PROBE_REGISTRY, PROBES

    for reg, mapping in ((STAGES, REGISTRY), (METRIC_REGISTRY, METRICS), (EXTRACTOR_REGISTRY, EXTRACTORS), (PROBE_REGISTRY, PROBES)):
        assert isinstance(reg, Registry) and reg.entries is mapping
    assert {"exact_dedup", "minhash_dedup", "language"} <= set(STAGES.names())
    assert list(SHAPES.entries)[:12] == ["llamafactory_preference", "trl_preference", "implicit_preference", "kto", "oasst_tree",
                                         "openai", "sharegpt", "alpaca", "dolly", "prompt_completion", "prompt_only", "mapped"]
    assert JUDGE_BACKENDS.get("local") is LocalJudge and JUDGE_BACKENDS.get("openai") is OpenAIJudge
    with pytest.raises(UnknownStageError) as exc:
        get_stage("minhash_dedupe")
    assert isinstance(exc.value, KeyError) and isinstance(exc.value, ValueError)
    assert str(exc.value).startswith("unknown stage 'minhash_dedupe'. Did you mean 'minhash_dedup', 'embedding_dedup'? Known stages: ")
    with pytest.raises(UnknownMetric, match=r"'rougeL' is a result of metric 'rouge'"):
        get_metric("rougeL")
    assert (STAGES.group, METRIC_REGISTRY.group, JUDGE_BACKENDS.group, SHAPES.group, PROBE_REGISTRY.group) == (
        "finetune_workbench.stages", "finetune_workbench.metrics", "finetune_workbench.judge_backends", "finetune_workbench.shapes",
        "finetune_workbench.probes")


def test_a_registered_shape_is_validated_and_detected():
    from curate.config import ConfigError, parse_config
    from curate.shapes import SHAPES, Converter, Shape, ShapeError, register_shape, resolve_shape

    with pytest.raises(ValueError, match=r"unknown shape 'alpacca' \(did you mean 'alpaca'\?\); known shapes: auto, alpaca"):
        resolve_shape("alpacca")
    before = Converter("auto")

    @register_shape
    class RegistryTestPairs(Shape):
        name = "registry_test_pairs"
        fields = ("rt_question", "rt_answer")

        def convert(self, record):
            return [{"role": "human", "content": record["rt_question"]}, {"role": "gpt", "content": record["rt_answer"]}]

    try:
        record = {"rt_question": "What is 2 + 2?", "rt_answer": "4<|endoftext|>", "rt_topic": "sums"}
        shape, roles, contents, meta, fixes, _ = Converter("auto").convert(record)
        assert (shape, roles, contents) == ("registry_test_pairs", ["user", "assistant"], ["What is 2 + 2?", "4"])
        assert (meta, fixes) == ('{"rt_topic":"sums"}', ["eos_marker"])
        with pytest.raises(ShapeError, match="unrecognized shape"):
            before.convert(record)  # a converter keeps the shapes of its own time
        with pytest.raises(ShapeError, match=r"shape 'registry_test_pairs' failed: KeyError"):
            Converter("registry_test_pairs").convert({"rt_question": "only a question"})
        cfg = parse_config({"name": "x", "inputs": [{"path": "a.jsonl", "shape": "registry_test_pairs"}], "stages": []})
        assert cfg.inputs[0].shape == "registry_test_pairs"
        with pytest.raises(ConfigError, match=r"did you mean 'registry_test_pairs'"):
            parse_config({"name": "x", "inputs": [{"path": "a.jsonl", "shape": "registry_test_pair"}], "stages": []})
    finally:
        SHAPES.remove("registry_test_pairs")


def test_train_configs_and_suites_name_a_shape_by_its_file(tmp_path):
    from curate.shapes import SHAPES
    from evalsuite.suite import SuiteConfig
    from train.config import TrainConfigError, parse_train_config

    _write(tmp_path, "fwb_qa_shape.py", """
        from curate.shapes import Shape

        class QAShape(Shape):
            name = "registry_test_qa"
            fields = ("qa_q", "qa_a")

            def convert(self, record):
                return [{"role": "user", "content": record["qa_q"]}, {"role": "assistant", "content": record["qa_a"]}]
    """)
    try:
        cfg = parse_train_config({"name": "t", "data": [{"path": "d.jsonl", "shape": "./fwb_qa_shape.py:QAShape"}]}, tmp_path)
        assert cfg.data[0].shape == "registry_test_qa" and SHAPES.get("registry_test_qa").__module__ == "fwb_qa_shape"
        with pytest.raises(TrainConfigError, match=r"data\.0\.shape: unknown shape 'registry_test_q' \(did you mean 'registry_test_qa'\?\)"):
            parse_train_config({"name": "t", "data": [{"path": "d.jsonl", "shape": "registry_test_q"}]}, tmp_path)
        suite = SuiteConfig.model_validate({"name": "s", "tasks": [{"name": "t", "path": "d.jsonl", "shape": "registry_test_qa", "metrics": ["bleu"]}]})
        assert suite.tasks[0].shape == "registry_test_qa"
    finally:
        SHAPES.remove("registry_test_qa")
