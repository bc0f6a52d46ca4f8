"""One registry for the components: soft-labelers, zero-shot generators and query sources.

Modelled on timm's model registry: components register with a plain decorator,
users build them with ``create_*`` and discover them with ``list_*`` (fnmatch
filters). Third-party packages plug in through the entry-point groups
``db3_timm.labelers``, ``db3_timm.generators`` and ``db3_timm.sources``; each entry point's name is
the component name and its object the factory, imported on first use.
"""
from __future__ import annotations

import fnmatch
import warnings
from importlib import metadata
from typing import Any, Callable, Dict, List, Optional, Sequence, TypeVar, Union

__all__ = [
    "register_labeler",
    "create_labeler",
    "list_labelers",
    "is_labeler",
    "register_generator",
    "create_generator",
    "list_generators",
    "is_generator",
    "register_source",
    "create_source",
    "list_sources",
    "is_source",
]

F = TypeVar("F", bound=Callable[..., Any])

_ENTRY_POINT_GROUPS = {"labeler": "db3_timm.labelers", "generator": "db3_timm.generators", "source": "db3_timm.sources"}
_factories: Dict[str, Dict[str, Callable[..., Any]]] = {kind: {} for kind in _ENTRY_POINT_GROUPS}
# Entry points are listed once, but only imported when their component is created.
_entry_points: Dict[str, Dict[str, metadata.EntryPoint]] = {}


def _register(kind: str, fn: Optional[F], name: Optional[str]) -> Union[F, Callable[[F], F]]:
    def wrap(factory: F) -> F:
        key = name or getattr(factory, "name", None) or factory.__name__
        if not isinstance(key, str) or not key:
            raise ValueError(f"{kind} name must be a non-empty string, got {key!r}")
        existing = _factories[kind].get(key)
        if existing is not None and existing is not factory:
            warnings.warn(f"{kind} {key!r} is registered again; the newer registration wins", stacklevel=3)
        _factories[kind][key] = factory
        return factory

    return wrap(fn) if fn is not None else wrap


def _discover(kind: str) -> Dict[str, metadata.EntryPoint]:
    if kind not in _entry_points:
        found = {}
        for ep in metadata.entry_points(group=_ENTRY_POINT_GROUPS[kind]):
            found.setdefault(ep.name, ep)
        _entry_points[kind] = found
    return _entry_points[kind]


def _known(kind: str) -> List[str]:
    return sorted(set(_factories[kind]) | set(_discover(kind)))


def _resolve(kind: str, name: str) -> Callable[..., Any]:
    if name in _factories[kind]:
        return _factories[kind][name]
    ep = _discover(kind).get(name)
    if ep is None:
        raise ValueError(f"unknown {kind} {name!r}; known {kind}s: {', '.join(_known(kind)) or '(none)'}")
    factory = ep.load()
    # The plugin module may have registered itself on import; otherwise the entry point is the factory.
    _factories[kind].setdefault(name, factory)
    return _factories[kind][name]


def _list(kind: str, filter: Union[str, Sequence[str]], exclude_filters: Union[str, Sequence[str]]) -> List[str]:
    names = _known(kind)
    includes = [filter] if isinstance(filter, str) else list(filter)
    excludes = [exclude_filters] if isinstance(exclude_filters, str) else list(exclude_filters)
    includes = [f for f in includes if f]
    if includes:
        names = [n for n in names if any(fnmatch.fnmatch(n, f) for f in includes)]
    for pattern in (e for e in excludes if e):
        names = [n for n in names if not fnmatch.fnmatch(n, pattern)]
    return names


def _reset_entry_point_cache() -> None:
    """Forgets discovered entry points so newly installed plugins are found (used by tests)."""
    _entry_points.clear()


# ---------------------------------------------------------------------- labelers
def register_labeler(fn: Optional[F] = None, *, name: Optional[str] = None) -> Union[F, Callable[[F], F]]:
    """Registers a soft-labeler factory ``factory(oracle, **cfg)``; usable bare or as ``@register_labeler(name=...)``.

    Returns:
        The factory unchanged (or a decorator when called with only ``name``).
    """
    return _register("labeler", fn, name)


def create_labeler(name: str, oracle: Any, **cfg: Any) -> Any:
    """Builds the registered labeler ``name`` around a label-only ``oracle``.

    Args:
        name: a name from :func:`list_labelers`.
        oracle: the :class:`~db3_timm.oracle.LabelOracle` to query.
        **cfg: labeler options.

    Returns:
        The labeler instance.
    """
    return _resolve("labeler", name)(oracle, **cfg)


def list_labelers(filter: Union[str, Sequence[str]] = "", exclude_filters: Union[str, Sequence[str]] = "") -> List[str]:
    """Returns the sorted names of registered labelers (entry-point plugins included) matching fnmatch ``filter``."""
    return _list("labeler", filter, exclude_filters)


def is_labeler(name: str) -> bool:
    """Returns whether ``name`` is a known labeler."""
    return name in _factories["labeler"] or name in _discover("labeler")


# ---------------------------------------------------------------------- generators
def register_generator(fn: Optional[F] = None, *, name: Optional[str] = None) -> Union[F, Callable[[F], F]]:
    """Registers a transfer-set generator factory ``factory(oracle, **cfg)``.

    Returns:
        The factory unchanged (or a decorator when called with only ``name``).
    """
    return _register("generator", fn, name)


def create_generator(name: str, oracle: Any, **cfg: Any) -> Any:
    """Builds the registered zero-shot generator ``name`` around a label-only ``oracle``.

    Returns:
        The generator instance.
    """
    return _resolve("generator", name)(oracle, **cfg)


def list_generators(filter: Union[str, Sequence[str]] = "", exclude_filters: Union[str, Sequence[str]] = "") -> List[str]:
    """Returns the sorted names of registered generators (entry-point plugins included) matching ``filter``."""
    return _list("generator", filter, exclude_filters)


def is_generator(name: str) -> bool:
    """Returns whether ``name`` is a known generator."""
    return name in _factories["generator"] or name in _discover("generator")


# ---------------------------------------------------------------------- query sources
def register_source(fn: Optional[F] = None, *, name: Optional[str] = None) -> Union[F, Callable[[F], F]]:
    """Registers a query-source factory ``factory(**options)`` (see :mod:`db3_timm.sources`).

    Returns:
        The factory unchanged (or a decorator when called with only ``name``).
    """
    return _register("source", fn, name)


def create_source(name: str, **options: Any) -> Any:
    """Builds the registered query source ``name`` (its options are checked now, before any query).

    Returns:
        The source instance.
    """
    return _resolve("source", name)(**options)


def list_sources(filter: Union[str, Sequence[str]] = "", exclude_filters: Union[str, Sequence[str]] = "") -> List[str]:
    """Returns the sorted names of registered query sources (entry-point plugins included) matching ``filter``."""
    return _list("source", filter, exclude_filters)


def is_source(name: str) -> bool:
    """Returns whether ``name`` is a known query source."""
    return name in _factories["source"] or name in _discover("source")
