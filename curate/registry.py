"""One registry mechanism for everything a config names: stages, shapes, metrics, extractors, probe kinds,
judge backends.

A :class:`Registry` maps names to objects of one kind. It is filled three ways:

- **built-ins**, by importing the modules listed as ``builtins`` on the first lookup (their decorators
  register), so listing or naming one thing never imports what is not needed before then;
- **installed packages**, through the entry point group ``finetune_workbench.<kind>s``
  (``finetune_workbench.stages``, ``.shapes``, ``.metrics``, ``.extractors``, ``.probes``,
  ``.judge_backends``), read with :mod:`importlib.metadata`: ``name = "pkg.module:Attr"`` registers ``Attr``
  under ``name``; ``name = "pkg.module"`` imports the module, whose decorators register what it holds;
- **a user's own module**, by a ``plugins:`` list in a config (:mod:`curate.plugins`) or a spec naming the
  object itself: ``my_pkg.my_stages:MyStage`` or ``./my_stage.py:MyStage`` (a file path relative to the
  config's folder). :meth:`Registry.lookup` imports the module, registers the object when it is not yet
  registered, and returns its name and entry.

An unknown name is an :class:`UnknownNameError` (a ``ValueError``) of one line: the name, the close matches
("did you mean") and every known name. A missing module, file or attribute in a spec, or an object of the
wrong kind, is a :class:`RegistryError` of one line naming it.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar, overload

T = TypeVar("T")

ENTRY_POINT_PREFIX = "finetune_workbench"


class RegistryError(ValueError):
    """A registry problem in one plain line: a spec whose module, file or attribute is missing, an object of
    the wrong kind, a name registered twice, a broken entry point."""

    def __str__(self) -> str:  # subclasses may also be KeyErrors, which would quote the message
        return str(self.args[0]) if self.args else ""


class UnknownNameError(RegistryError):
    """A name that is not registered; the message has the close matches and the known names."""


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'a' or 'b'?)`` for the close matches of ``name`` among ``known``; empty when none."""
    close = difflib.get_close_matches(name, list(known), n=3)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def is_spec(value: str) -> bool:
    """Whether ``value`` names an object by its module (``module.path:Attr`` or ``path/file.py:Attr``)
    rather than by a registered name."""
    module, sep, attr = value.rpartition(":")
    return bool(sep and module and attr and attr.isidentifier())


class Registry(Generic[T]):
    """Names to entries of one kind (``kind``: "stage", "metric", "judge backend"...).

    ``builtins``: modules imported on the first lookup (they register the built-in entries).
    ``name_of(obj)``: the name an object registers under when none is given (default: its ``name``
    attribute, else its ``__name__``). ``coerce(name, obj)``: the entry stored for an object a spec or an
    entry point names (default: the object itself); it raises :class:`RegistryError` for an object of the
    wrong kind. ``error``: the :class:`UnknownNameError` subclass raised for an unknown name. ``group``: the
    entry point group (default ``finetune_workbench.<kind>s``, spaces as underscores).

    ``entries`` is the live mapping (registration order); older code may read it as a dict.
    """

    def __init__(
        self,
        kind: str,
        *,
        builtins: Sequence[str] = (),
        name_of: Callable[[Any], str] | None = None,
        coerce: Callable[[str, Any], T] | None = None,
        error: type[UnknownNameError] = UnknownNameError,
        group: str | None = None,
        plural: str | None = None,
    ):
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self.builtins = tuple(builtins)
        self.group = group or f"{ENTRY_POINT_PREFIX}.{self.plural.replace(' ', '_')}"
        self.error = error
        self._name_of = name_of
        self._coerce = coerce
        self.entries: dict[str, T] = {}
        self.origins: dict[str, Any] = {}  # name -> the object a spec or entry point gave (a class, a function)
        self._loaded = False
        self._entry_points_seen: set[tuple[str, str]] = set()

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self.entries)} entries)"

    # -- registering -------------------------------------------------------------------------------------
    def name_of(self, obj: Any) -> str:
        """The name ``obj`` registers under when none is given."""
        if self._name_of is not None:
            try:
                return self._name_of(obj)
            except AttributeError:
                raise RegistryError(f"cannot tell the name of {obj!r}: register it with a name") from None
        name = getattr(obj, "name", None)
        if isinstance(name, str) and name:
            return name
        name = getattr(obj, "__name__", None)
        if not isinstance(name, str):
            raise RegistryError(f"cannot tell the name of {obj!r}: register it with a name")
        return name

    def add(self, name: str, entry: T, origin: Any = None) -> T:
        """Register ``entry`` as ``name``. The same entry again is a no-op; another entry under a taken name
        is a :class:`RegistryError` naming both."""
        if not isinstance(name, str) or not name:
            raise RegistryError(f"a {self.kind} needs a non-empty name, got {name!r}")
        current = self.entries.get(name)
        if current is not None and current is not entry:
            raise RegistryError(f"{self.kind} {name!r} is already registered (by {_where(self.origins.get(name, current))}); "
                                f"{_where(origin if origin is not None else entry)} registers it again: rename one")
        self.entries[name] = entry
        if origin is not None or name not in self.origins:
            self.origins[name] = origin if origin is not None else entry
        return entry

    @overload
    def register(self, obj: str) -> Callable[[Any], Any]: ...

    @overload
    def register(self, obj: Any) -> Any: ...

    def register(self, obj: Any = None, *, name: str | None = None) -> Any:
        """Decorator: ``@reg.register`` (under :meth:`name_of`) or ``@reg.register("name")``. The decorated
        object is stored through ``coerce`` and returned unchanged."""
        if isinstance(obj, str) or obj is None:
            given = obj if isinstance(obj, str) else name

            def decorate(target: Any) -> Any:
                key = given or self.name_of(target)
                self.add(key, self.coerce(key, target), target)
                return target

            return decorate
        key = name or self.name_of(obj)
        self.add(key, self.coerce(key, obj), obj)
        return obj

    def coerce(self, name: str, obj: Any) -> T:
        """The entry stored for ``obj`` (the registry's ``coerce``, else ``obj`` itself)."""
        return self._coerce(name, obj) if self._coerce is not None else obj

    def remove(self, name: str) -> None:
        """Forget ``name`` (tests that register a throw-away entry clean up with it)."""
        self.entries.pop(name, None)
        self.origins.pop(name, None)

    # -- looking up --------------------------------------------------------------------------------------
    def get(self, name: str) -> T:
        """The entry registered as ``name``; :attr:`error` (one line: did-you-mean and the known names)."""
        self.load()
        if name in self.entries:
            return self.entries[name]
        if self._load_entry_points() and name in self.entries:  # a package installed since the first lookup
            return self.entries[name]
        raise self.unknown(name)

    def unknown(self, name: str, extra: Sequence[str] = ()) -> UnknownNameError:
        """The error for an unknown ``name``; ``extra`` are names accepted besides the registered ones (a
        shape's ``auto``), offered as matches and listed too."""
        known = [*extra, *sorted(self.entries)]
        return self.error(f"unknown {self.kind} {name!r}{did_you_mean(str(name), known)}; known {self.plural}: {', '.join(known)}")

    def lookup(self, name_or_spec: str, base_dir: str | Path | None = None) -> tuple[str, T]:
        """``(name, entry)`` for a registered name, or for a ``module:Attr`` / ``file.py:Attr`` spec (the
        module imported, a file relative to ``base_dir``, the object registered when it is not yet)."""
        if isinstance(name_or_spec, str) and is_spec(name_or_spec):
            return self.resolve(name_or_spec, base_dir)
        return name_or_spec, self.get(name_or_spec)

    def resolve(self, spec: str, base_dir: str | Path | None = None) -> tuple[str, T]:
        """Import the module of ``module.path:Attr`` or ``path/to/file.py:Attr`` (relative to ``base_dir``,
        default the working directory) and return ``(name, entry)`` for ``Attr``: the registered name when
        the module registered it already (a decorated class or function), else registered now under
        :meth:`name_of`. :class:`RegistryError` in one line for a missing module, file or attribute."""
        from curate.plugins import PluginError, import_entry

        self.load()
        module_part, _, attr = spec.rpartition(":")
        try:
            module = import_entry(module_part, base_dir or Path.cwd())
        except PluginError as exc:
            raise RegistryError(f"{self.kind} {spec!r}: {exc}") from None
        if not hasattr(module, attr):
            public = [n for n in vars(module) if not n.startswith("_")]
            raise RegistryError(f"{self.kind} {spec!r}: {module_part} has no attribute {attr!r}{did_you_mean(attr, public)}")
        return self.adopt(getattr(module, attr), f"{self.kind} {spec!r}", attr)

    def adopt(self, obj: Any, where: str, default_name: str | None = None) -> tuple[str, T]:
        """``(name, entry)`` of ``obj``: its registered name when it is registered (as itself or as what it
        was coerced into), else registered now under :meth:`name_of` (``default_name`` when it has none).
        ``where`` prefixes an error."""
        for name, origin in self.origins.items():
            if origin is obj:
                return name, self.entries[name]
        try:
            try:
                name = self.name_of(obj)
            except RegistryError:
                if default_name is None:
                    raise
                name = default_name
            entry = self.coerce(name, obj)
            self.add(name, entry, obj)
        except RegistryError as exc:
            raise RegistryError(f"{where}: {exc}") from None
        return name, entry

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        self.load()
        return sorted(self.entries)

    def items(self) -> list[tuple[str, T]]:
        """``(name, entry)`` for every registered name, sorted by name."""
        self.load()
        return sorted(self.entries.items())

    def __contains__(self, name: object) -> bool:
        self.load()
        return name in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self.load()
        return len(self.entries)

    # -- loading -----------------------------------------------------------------------------------------
    def load(self) -> None:
        """Import the built-in modules and the installed entry points, once (later calls return at once)."""
        if self._loaded:
            return
        self._loaded = True  # set first: the modules imported below register through this registry
        try:
            for module in self.builtins:
                importlib.import_module(module)
        except BaseException:
            self._loaded = False
            raise
        self._load_entry_points()

    def _load_entry_points(self) -> bool:
        """Register what installed packages declare in :attr:`group` and was not seen yet; True when any was."""
        from importlib.metadata import entry_points

        found = False
        for ep in entry_points(group=self.group):
            key = (ep.name, ep.value)
            if key in self._entry_points_seen:
                continue
            self._entry_points_seen.add(key)
            found = True
            dist = getattr(getattr(ep, "dist", None), "name", None)
            where = f"entry point {ep.name} = {ep.value!r} ({self.group}{f', package {dist}' if dist else ''})"
            try:
                obj = ep.load()
            except Exception as exc:
                raise RegistryError(f"{where} cannot be loaded: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
            if ep.attr is None:  # a module: its decorators registered what it holds
                continue
            try:
                self.add(ep.name, self.coerce(ep.name, obj), obj)
            except RegistryError as exc:
                raise RegistryError(f"{where}: {exc}") from None
        return found


def _where(obj: Any) -> str:
    """Where an object was defined, for an error message: ``module.Name`` or its repr."""
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    return f"{module}.{name}" if module and name else repr(obj)[:80]


def origin_file(obj: Any) -> Path | None:
    """The source file ``obj`` (a class or function) was defined in, when it lies outside this project's
    packages (a user's plugin): a run fingerprints it, so editing the plugin re-runs. None otherwise."""
    import inspect
    import sys

    module = sys.modules.get(getattr(obj, "__module__", "") or "")
    top = (getattr(obj, "__module__", "") or "").split(".")[0]
    if top in ("curate", "chat", "train", "evalsuite", "app") or module is None:
        return None
    try:
        file = inspect.getsourcefile(obj) or getattr(module, "__file__", None)
    except TypeError:
        file = getattr(module, "__file__", None)
    return Path(file).resolve() if file else None
