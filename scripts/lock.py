"""Regenerate ``constraints.txt``: the exact versions ``make setup`` installs, resolved from pyproject's ranges.

pip resolves ``.[dev]`` (every runtime and development dependency) without installing anything
(``pip install --dry-run --ignore-installed --report``), with torch held at the release whose CPU wheel the
setup uses, and this script writes one ``name==version`` line per package. A constraints file, not a
requirements file: it pins what gets installed without asking for more, so a package that one platform does
not need (CUDA libraries on a CPU machine) is simply not installed there.

    .venv/bin/python scripts/lock.py            # or: make lock
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"  # the CPU wheel: a bare `torch` on Linux resolves to a CUDA build of several GB
HEADER = """\
# The exact versions `make setup` installs (pip install -c constraints.txt), resolved from pyproject.toml's
# ranges by `make lock` (scripts/lock.py). Regenerate after changing a range; CI tests this set.
"""


def resolve(extra_args: list[str]) -> dict[str, str]:
    """Resolve ``.[dev]`` plus the torch pin with pip's dry run; return {normalized name: version}."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
               "--report", str(report), TORCH, f"{ROOT}[dev]", *extra_args]
        subprocess.run(cmd, check=True)
        installs = json.loads(report.read_text())["install"]
    pins = {}
    for item in installs:
        meta = item["metadata"]
        if item.get("download_info", {}).get("dir_info") is not None:  # the project itself
            continue
        pins[meta["name"].lower().replace("_", "-")] = meta["version"].split("+")[0]
    return pins


def main() -> None:
    """Write constraints.txt next to pyproject.toml; extra arguments go to pip (e.g. ``--find-links DIR``)."""
    pins = resolve(sys.argv[1:])
    lines = [f"{name}=={version}" for name, version in sorted(pins.items())]
    (ROOT / "constraints.txt").write_text(HEADER + "\n".join(lines) + "\n")
    print(f"constraints.txt: {len(lines)} packages")


if __name__ == "__main__":
    main()
