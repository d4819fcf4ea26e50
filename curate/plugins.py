"""A user's own code: Python modules a config names under ``plugins:`` (or in a ``module:Attr`` spec), imported
before the config is checked, so what they register (stages, shapes, metrics, judge backends...) is known.

```yaml
plugins: [my_checks, extra/brevity.py]   # a module name, or a .py file relative to the config file
```
A plugin registers its objects with the registry of their kind (:mod:`curate.registry`), the one every built-in
is in, so a config names them like any other. A module name is imported with the config's folder first on the
import path (``my_checks`` finds ``my_checks.py`` next to the config); an entry ending in ``.py`` or holding a
``/`` is a file. Each plugin is imported once per process, however many configs or runs name it.

:func:`plugin_record` is what a run records of a plugin (its module and file), and :func:`load_recorded` imports
the same code again in another process (``evalsuite compare`` and ``gate`` do, before they read a metric).
Every error is a :class:`PluginError` of one line naming the entry and why.
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


def is_file_entry(entry: str) -> bool:
    """Whether a plugin entry names a file (ends in ``.py`` or holds a path separator) rather than a module."""
    return entry.endswith(".py") or "/" in entry or "\\" in entry


def load_file(path: Path, name: str | None = None) -> ModuleType:
    """The module in ``path`` (run once per process), under ``name`` (default: the file's stem)."""
    key = str(path.resolve())
    if key in _LOADED:
        return _LOADED[key]
    name = name or path.stem
    existing = sys.modules.get(name)
    if existing is not None:
        existing_file = getattr(existing, "__file__", None)
        if existing_file and str(Path(existing_file).resolve()) == key:
            _LOADED[key] = existing
            return existing
        raise PluginError(f"{path}: another module named {name!r} is already imported ({existing_file or 'built in'}); rename the plugin file")
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


def load_module(name: str, base_dir: Path) -> ModuleType:
    """Module ``name``, imported with ``base_dir`` first on the import path."""
    sys.path.insert(0, str(base_dir))
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):  # the plugin itself is missing, not one of its own imports
            raise PluginError(f"no module {name!r} (looked next to the config, in {base_dir}, and on the import path)") from None
        raise PluginError(f"{name}: the plugin failed on import: {_first_line(exc)}") from None
    except Exception as exc:
        raise PluginError(f"{name}: the plugin failed on import: {_first_line(exc)}") from None
    finally:
        sys.path.remove(str(base_dir))
    module_file = getattr(module, "__file__", None)
    if module_file:
        _LOADED.setdefault(str(Path(module_file).resolve()), module)
    return module


def import_entry(entry: str, base_dir: str | Path) -> ModuleType:
    """The module of one plugin entry: a module name (imported with ``base_dir`` first on the import path) or
    a ``.py`` file (relative to ``base_dir``); :class:`PluginError` in one line when it is missing or fails."""
    base = Path(base_dir).resolve()
    if is_file_entry(entry):
        path = Path(entry).expanduser()
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            raise PluginError(f"plugin file {entry} not found (looked for {path})")
        return load_file(path)
    return load_module(entry, base)


def plugin_record(module: ModuleType) -> dict[str, str | None]:
    """What a run records of a plugin: ``{"module": name, "file": absolute path}`` (file None for a module
    without one)."""
    file = getattr(module, "__file__", None)
    return {"module": module.__name__, "file": str(Path(file).resolve()) if file else None}


def load_plugins(entries: Any, base_dir: str | Path) -> list[dict[str, str | None]]:
    """Import every plugin of a ``plugins:`` list (module names, or ``.py`` paths relative to ``base_dir``);
    returns what a run records of each (:func:`plugin_record`). :class:`PluginError` in one line for a list
    that is not one of strings, a missing module or file, or a plugin that raises while it is imported
    (registering a name twice included)."""
    if entries is None:
        return []
    if not isinstance(entries, (list, tuple)) or not all(isinstance(e, str) and e.strip() for e in entries):
        raise PluginError(f"plugins must be a list of module names or .py paths, got {entries!r}")
    return [plugin_record(import_entry(entry, base_dir)) for entry in entries]


def load_recorded(records: Sequence[dict[str, Any]]) -> None:
    """Import the plugins a run recorded (``results.json`` ``plugins``): each by its file when that still
    exists, else by its module name. :class:`PluginError` naming the plugin when neither works."""
    for rec in records:
        name, file = str(rec.get("module") or ""), rec.get("file")
        if name in sys.modules and (not file or str(Path(getattr(sys.modules[name], "__file__", "") or "").resolve()) == str(Path(file).resolve())):
            continue
        if file and Path(file).is_file():
            load_file(Path(file), name)
            continue
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise PluginError(f"the run used plugin {name!r} ({file or 'no file'}), which cannot be imported here: {_first_line(exc)}") from None
