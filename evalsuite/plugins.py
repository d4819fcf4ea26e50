"""A user's own metrics: Python modules a suite names under ``plugins:``, imported before the suite is checked.

```yaml
name: my-suite
plugins: [my_metrics, checks/brevity.py]   # a module name, or a .py file relative to the suite file
tasks:
  - {name: qa, path: qa.jsonl, metrics: [brevity, rougeL, ./more_metrics.py:terse]}
```
A plugin registers its metrics with :func:`evalsuite.metrics.register`, the registry every built-in metric is
in, so a suite names them like any other; a metric can also be named by ``module:function`` or
``file.py:function`` directly. A module name is imported with the suite's folder first on the import path
(``my_metrics`` finds ``my_metrics.py`` next to the suite); an entry ending in ``.py`` or holding a ``/`` is a
file. Each plugin is imported once per process, however many suites or runs name it.

A run records the file each plugin was loaded from (``results.json`` ``plugins``), and ``evalsuite compare`` and
``gate`` import the same files before they ask a metric how to read its numbers (its direction, its
aggregation for the bootstrap): the code the run itself executed.

The importer itself is :mod:`curate.plugins` (curate configs name plugins the same way); this module keeps
evalsuite's names for it.
"""

from __future__ import annotations

from curate.plugins import PluginError, import_entry, load_plugins, load_recorded, plugin_record

__all__ = ["PluginError", "import_entry", "load_plugins", "load_recorded", "plugin_record"]
