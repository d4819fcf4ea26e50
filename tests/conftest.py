from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED}")
    return SHARED


@pytest.fixture
def run_config(tmp_path):
    """Run a curate config given as a dict (paths relative to tmp_path) and return the RunResult."""
    from curate.config import parse_config
    from curate.pipeline import Pipeline

    def _run(cfg: dict, **kwargs):
        cfg = {"name": "t", "tokenizer": None, **cfg}
        config = parse_config(cfg, tmp_path)
        return Pipeline(config, progress=False, strict=kwargs.pop("strict", None)).run(**kwargs)

    return _run


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
