"""The algorithm registry: each algorithm is registered once, with its class, its own
hyperparameter space and the kind of task it solves (timm's ``@register_model`` shape)::

    @register_algorithm("SAM", space=sam_space)
    class SAM(TwoPassAlgorithm): ...

Everything else reads from here: ``build_algorithm``, the hyperparameter registry
(``sage_bench.config.space.hparam_space``), the ``algorithm=`` choices of the Hydra configuration
and the messages that list valid names.

Algorithms from other packages register the same way. An installed package makes them known
through the entry-point group ``sage_bench.algorithms`` (each entry point names a module that is
imported, and whose ``register_algorithm`` calls run, before the first lookup); a job's
``plugins=[module, ...]`` key imports modules too.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from sage_bench.errors import UserError
from sage_bench.hparams import HParam, HParamError, SpaceContext
from sage_bench.records import DOMAIN_GENERALIZATION, MULTI_TASK, TASKS

if TYPE_CHECKING:
    from sage_bench.algorithms.base import Algorithm

ENTRY_POINT_GROUP = "sage_bench.algorithms"

Space = Callable[[SpaceContext], dict[str, HParam]]


def no_hparams(context: SpaceContext) -> dict[str, HParam]:
    """The space of an algorithm without hyperparameters of its own."""
    return {}


@dataclass(frozen=True)
class RegisteredAlgorithm:
    """One registered algorithm: its name, class, hyperparameter space and task kind
    (``DOMAIN_GENERALIZATION``: an ``Algorithm``; ``MULTI_TASK``: a ``MultiTaskAlgorithm``)."""

    name: str
    # an Algorithm or a MultiTaskAlgorithm subclass: the registry imports no module that registers
    # into it (sage_bench.algorithms.multitask does), not even for its types
    cls: type
    space: Space
    task: str = DOMAIN_GENERALIZATION


_REGISTRY: dict[str, RegisteredAlgorithm] = {}
_entry_points_loaded = False


def register_algorithm(
    name: str, *, space: Space = no_hparams, task: str = DOMAIN_GENERALIZATION
) -> Callable[[type[Algorithm]], type[Algorithm]]:
    """Class decorator: register ``cls`` as ``name`` with its hyperparameter ``space`` (a
    function of a ``SpaceContext`` returning ``{name: HParam}``) for ``task``."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid choices: {', '.join(TASKS)}")

    def register(cls: type[Algorithm]) -> type[Algorithm]:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.cls is not cls:
            raise AlgorithmRegisteredTwice(
                f"algorithm {name!r} is registered twice ({existing.cls.__module__}.{existing.cls.__qualname__} "
                f"and {cls.__module__}.{cls.__qualname__}); give the second another name"
            )
        _REGISTRY[name] = RegisteredAlgorithm(name, cls, space, task)
        return cls

    return register


class AlgorithmRegisteredTwice(ValueError):
    """A second class registered under a name that is taken."""


class PluginError(UserError, ImportError):
    """A plugin module that cannot be imported."""


def _plugin_failure(plugin: str, module: str, exc: BaseException) -> PluginError:
    """What is wrong with the plugin ``plugin`` (module ``module``) whose import raised ``exc``,
    and what to do."""
    if isinstance(exc, AlgorithmRegisteredTwice):
        return PluginError(f"the plugin {plugin} registers an algorithm under a name that is taken: {exc}")
    if isinstance(exc, SyntaxError):
        where = f"{exc.filename}, line {exc.lineno}" if exc.filename else module
        return PluginError(f"the plugin {plugin} has a syntax error ({where}: {exc.msg}); fix the module")
    if isinstance(exc, ModuleNotFoundError) and exc.name and module.startswith(exc.name):
        return PluginError(
            f"cannot import the plugin {plugin} ({exc}); it must be importable (installed, or on PYTHONPATH)"
        )
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f" ({tb.tb_frame.f_code.co_filename}, line {tb.tb_lineno})" if tb is not None else ""
    return PluginError(
        f"the plugin {plugin} failed to import: {type(exc).__name__}: {exc}{where}; fix the module "
        "(`python -c 'import " + module + "'` shows the traceback)"
    )


def load_plugins(modules: list[str] | tuple[str, ...] = ()) -> None:
    """Import the entry points of group ``sage_bench.algorithms`` (once) and ``modules``; a
    plugin that cannot be imported is a ``PluginError`` naming it, the problem and the fix."""
    global _entry_points_loaded
    if not _entry_points_loaded:
        _entry_points_loaded = True
        for entry in entry_points(group=ENTRY_POINT_GROUP):
            try:
                entry.load()
            except Exception as exc:  # a broken plugin must not hide the built-in algorithms
                plugin = f"{entry.name!r} ({entry.value}) of an installed package"
                raise _plugin_failure(plugin, entry.value.split(":")[0], exc) from exc
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:
            raise _plugin_failure(f"module {module!r}", module, exc) from exc


def algorithms(task: str | None = None) -> dict[str, RegisteredAlgorithm]:
    """Every registered algorithm (for one ``task`` kind, or all), by name."""
    load_plugins()
    return {n: a for n, a in _REGISTRY.items() if task is None or a.task == task}


def get_algorithm(name: str) -> RegisteredAlgorithm:
    """The algorithm registered as ``name``, or an error listing the valid names."""
    registered = algorithms()
    if name not in registered:
        raise HParamError(f"unknown algorithm {name!r}; valid choices: {', '.join(sorted(registered))}")
    return registered[name]


def algorithm_space(
    algorithm: str, family: str = "large", dataset: str | None = None, backbone: str | None = None
) -> dict[str, HParam]:
    """The hyperparameters that belong to ``algorithm`` itself, in a context (its registered
    space function called, and what it returned checked)."""
    registered = get_algorithm(algorithm)
    where = f"algorithm {algorithm!r} ({registered.cls.__module__})"
    try:
        space = registered.space(SpaceContext(family, dataset, backbone))
    except Exception as exc:
        raise HParamError(
            f"the hyperparameter space of {where} raised {type(exc).__name__}: {exc}; fix its space function"
        ) from exc
    if not isinstance(space, Mapping) or not all(isinstance(k, str) and isinstance(v, HParam) for k, v in space.items()):
        raise HParamError(
            f"the hyperparameter space of {where} returned {type(space).__name__} {space!r:.80}; a space "
            "function returns a dict {name: HParam(...)} (sage_bench.algorithms.registry.no_hparams: none)"
        )
    return dict(space)


class _Classes(Mapping[str, Any]):
    """Read-only view ``name -> class`` of the registry's algorithms for one task kind."""

    def __init__(self, task: str):
        self.task = task

    def __getitem__(self, name: str) -> type[Algorithm]:
        return algorithms(self.task)[name].cls

    def __iter__(self) -> Iterator[str]:
        return iter(algorithms(self.task))

    def __len__(self) -> int:
        return len(algorithms(self.task))


ALGORITHMS: Mapping[str, type[Algorithm]] = _Classes(DOMAIN_GENERALIZATION)
"""Every registered domain-generalization algorithm class by name (a live view of the registry,
as DomainBed's ``ALGORITHMS``); ``algorithms(MULTI_TASK)`` lists the multi-task rows."""

__all__ = [
    "ALGORITHMS",
    "DOMAIN_GENERALIZATION",
    "ENTRY_POINT_GROUP",
    "MULTI_TASK",
    "TASKS",
    "PluginError",
    "RegisteredAlgorithm",
    "algorithm_space",
    "algorithms",
    "get_algorithm",
    "load_plugins",
    "no_hparams",
    "register_algorithm",
]
