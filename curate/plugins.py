"""A user's own metrics: Python modules a suite names under ``plugins:``, imported before the suite is checked.

```yaml
name: my-suite
plugins: [my_metrics, checks/brevity.py]   # a module name, or a .py file relative to the suite file
tasks:
  - {name: qa, path: qa.jsonl, metrics: [brevity, rougeL]}
```
A plugin registers its metrics with :func:`evalsuite.metrics.register`, the registry every built-in metric is
in, so a suite names them like any other. A module name is imported with the suite's folder first on the
import path (``my_metrics`` finds ``my_metrics.py`` next to the suite); an entry ending in ``.py`` or holding a
``/`` is a file. Each plugin is imported once per process, however many suites or runs name it.

A run records the file each plugin was loaded from (``results.json`` ``plugins``), and ``evalsuite compare`` and
``gate`` import the same files before they ask a metric how to read its numbers (its direction, its
aggregation for the bootstrap): the code the run itself executed.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

_LOADED: dict[str, ModuleType] = {}  # resolved file -> module: a plugin runs (and registers) once per process


class PluginError(ValueError):
    """A plugin that cannot be imported; the message names the entry and why, in one line."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _is_file_entry(entry: str) -> bool:
    return entry.endswith(".py") or "/" in entry or "\\" in entry


def _load_file(path: Path, name: str | None = None) -> ModuleType:
    """The module in ``path`` (run once per process), under ``name`` (default: the file's stem)."""
    key = str(path.resolve())
    if key in _LOADED:
        return _LOADED[key]
    name = name or path.stem
    existing = sys.modules.get(name)
    if existing is not None:
        if getattr(existing, "__file__", None) and str(Path(existing.__file__).resolve()) == key:
            _LOADED[key] = existing
            return existing
        raise PluginError(f"{path}: another module named {name!r} is already imported ({getattr(existing, '__file__', None) or 'built in'}); rename the plugin file")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise PluginError(f"{path}: the plugin failed on import: {_first_line(exc)}") from None
    _LOADED[key] = module
    return module


def _load_module(name: str, base_dir: Path) -> ModuleType:
    """Module ``name``, imported with ``base_dir`` first on the import path."""
    sys.path.insert(0, str(base_dir))
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):  # the plugin itself is missing, not one of its own imports
            raise PluginError(f"no module {name!r} (looked next to the suite, in {base_dir}, and on the import path)") from None
        raise PluginError(f"{name}: the plugin failed on import: {_first_line(exc)}") from None
    except Exception as exc:
        raise PluginError(f"{name}: the plugin failed on import: {_first_line(exc)}") from None
    finally:
        sys.path.remove(str(base_dir))
    if getattr(module, "__file__", None):
        _LOADED.setdefault(str(Path(module.__file__).resolve()), module)
    return module


def load_plugins(entries: Any, base_dir: str | Path) -> list[dict[str, str | None]]:
    """Import every plugin of a ``plugins:`` list (module names, or ``.py`` paths relative to ``base_dir``);
    returns what a run records of each: ``{"module": name, "file": absolute path}`` (file None for a module
    without one). :class:`PluginError` in one line for a list that is not one of strings, a missing module
    or file, or a plugin that raises while it is imported (registering a metric name twice included)."""
    if entries is None:
        return []
    if not isinstance(entries, (list, tuple)) or not all(isinstance(e, str) and e.strip() for e in entries):
        raise PluginError(f"plugins must be a list of module names or .py paths, got {entries!r}")
    base = Path(base_dir).resolve()
    records = []
    for entry in entries:
        if _is_file_entry(entry):
            path = Path(entry).expanduser()
            path = path if path.is_absolute() else base / path
            if not path.is_file():
                raise PluginError(f"plugin file {entry} not found (looked for {path})")
            module = _load_file(path)
        else:
            module = _load_module(entry, base)
        file = getattr(module, "__file__", None)
        records.append({"module": module.__name__, "file": str(Path(file).resolve()) if file else None})
    return records


def load_recorded(records: Sequence[dict[str, Any]]) -> None:
    """Import the plugins a run recorded (``results.json`` ``plugins``): each by its file when that still
    exists, else by its module name. :class:`PluginError` naming the plugin when neither works."""
    for rec in records:
        name, file = rec.get("module"), rec.get("file")
        if name in sys.modules and (not file or str(Path(getattr(sys.modules[name], "__file__", "") or "").resolve()) == str(Path(file).resolve())):
            continue
        if file and Path(file).is_file():
            _load_file(Path(file), name)
            continue
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise PluginError(f"the run used plugin {name!r} ({file or 'no file'}), which cannot be imported here: {_first_line(exc)}") from None
