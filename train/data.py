"""Training data shared by every objective: the prepared examples, the input files' hashes, the weighted mix."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from train.config import DataSource, TrainConfig


@dataclass
class PreparedData:
    """Tokenized, masked examples ready to train: train and validation rows, rejected records with reasons,
    counts (``stats``), digests of the data, sample prompts and the mask audit's rendered examples.

    ``data_files`` lists every input file (data sources and validation) with the sha256 of its bytes, and
    ``data_sha256`` hashes those: the sha256 of the files' hex digests, sorted, one per line with a newline
    after each. Neither depends on the seed or on the order of the records, and both can be checked against
    the files: ``sha256sum FILE`` gives each file's, and ``sha256sum FILES | cut -d' ' -f1 | LC_ALL=C sort |
    sha256sum`` gives ``data_sha256``. ``digest`` covers the encoded examples in training order (it moves with
    the seed and the encoding options): what a checkpoint is valid for (:func:`fingerprint`)."""
    train: list[dict[str, list[int]]]
    validation: list[dict[str, list[int]]]
    rejected: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    digest: str = ""
    sample_prompts: list[list[dict[str, str]]] = field(default_factory=list)  # for SampleGenerations
    audit: list[str] = field(default_factory=list)  # the first training records with their trained spans marked
    data_files: list[dict[str, Any]] = field(default_factory=list)
    data_sha256: str = ""
    sources: dict[str, tuple[int, int]] = field(default_factory=dict)  # input -> (records encoded, records kept)


def file_hashes(cfg: TrainConfig) -> tuple[list[dict[str, Any]], str]:
    """(``[{path, sha256, bytes}]`` for every file the data sources and the validation name, in path order,
    each file once; the combined hash): see :class:`PreparedData` for how to check both with ``sha256sum``."""
    from curate.readers import expand_paths

    paths = {f.resolve() for s in [*(d.path for d in cfg.data), *([cfg.validation] if cfg.validation else [])]
             for f in expand_paths(str(cfg.resolve(s)), Path("/"))}
    files: list[dict[str, Any]] = []
    for path in sorted(paths):
        h, size = hashlib.sha256(), 0
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
                size += len(chunk)
        files.append({"path": str(path), "sha256": h.hexdigest(), "bytes": size})
    combined = hashlib.sha256("".join(sorted(f["sha256"] + "\n" for f in files)).encode()).hexdigest()
    return files, combined


def mix(sources: list[tuple[DataSource, list]], seed: int) -> tuple[list, dict[str, int]]:
    """Draw the training examples: a weighted source supplies ``weight`` of the total, the unweighted
    ones share the rest in proportion to their sizes (each used once). A weighted source smaller than
    its share is repeated; one larger is sampled."""
    rng = random.Random(seed)
    unweighted = [items for s, items in sources if not s.weight]
    w_total = sum(s.weight or 0 for s, _ in sources)
    base = sum(len(x) for x in unweighted)
    total = round(base / (1 - w_total)) if unweighted and w_total < 1 else sum(len(x) for _, x in sources)
    out, counts = [], {}
    for s, items in sources:
        n = len(items) if not s.weight else round(s.weight * total)
        if s.weight and items:
            picked = [items[i % len(items)] for i in range(n)] if n > len(items) else rng.sample(items, n)
        else:
            picked = list(items)
        counts[s.path] = len(picked)
        out += picked
    rng.shuffle(out)
    return out, counts
