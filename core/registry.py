"""Plugin discovery through entry points.

Groups:
    ``ftib.stages``      -> :class:`ftib.core.Stage` subclasses
    ``ftib.evaluators``  -> :class:`ftib.core.Evaluator` subclasses
    ``ftib.rewards``     -> :class:`ftib.core.Reward` subclasses
    ``ftib.commands``    -> callables ``register(subparsers)`` adding ``ftib`` subcommands
    ``ftib.hooks``       -> named callables the kernel calls without importing their
                            package (contracts in :data:`ftib.core.interfaces.HOOKS`)

Built-ins are declared in ftib's own ``setup.py`` under the same groups and are found
the same way as third-party plugins; "built-in" only means "provided by the ``ftib``
distribution". The same name provided twice in one group is an error that names both
providers. ``FTIB_DISABLE_PLUGIN_AUTOLOAD=1`` restricts discovery to built-ins.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from ftib.core.errors import PluginError, did_you_mean

STAGES = "ftib.stages"
EVALUATORS = "ftib.evaluators"
REWARDS = "ftib.rewards"
COMMANDS = "ftib.commands"
HOOKS = "ftib.hooks"
GROUPS = (STAGES, EVALUATORS, REWARDS, COMMANDS, HOOKS)

BUILTIN_DIST = "ftib"
AUTOLOAD_ENV = "FTIB_DISABLE_PLUGIN_AUTOLOAD"

_GROUP_BASES: dict[str, str] = {
    STAGES: "Stage",
    EVALUATORS: "Evaluator",
    REWARDS: "Reward",
}


@dataclass(frozen=True)
class PluginSpec:
    """One entry point: where it comes from and what it points to."""

    group: str
    name: str
    value: str  # "module:attr"
    dist: str  # providing distribution name
    dist_version: str

    @property
    def builtin(self) -> bool:
        return _normalise(self.dist) == BUILTIN_DIST

    @property
    def provider(self) -> str:
        return f"{self.value} (from {self.dist} {self.dist_version})"


def _normalise(dist_name: str) -> str:
    return dist_name.lower().replace("_", "-")


def autoload_enabled() -> bool:
    return os.environ.get(AUTOLOAD_ENV, "").strip().lower() not in {"1", "true", "yes", "on"}


class Registry:
    """A snapshot of the installed plugins.

    Args:
        autoload: load third-party plugins too; default from ``FTIB_DISABLE_PLUGIN_AUTOLOAD``.
    """

    def __init__(self, autoload: bool | None = None) -> None:
        self.autoload = autoload_enabled() if autoload is None else autoload
        self._specs: dict[str, dict[str, PluginSpec]] | None = None
        self._loaded: dict[tuple[str, str], Any] = {}

    def _scan(self) -> dict[str, dict[str, PluginSpec]]:
        found: dict[str, dict[str, PluginSpec]] = {g: {} for g in GROUPS}
        seen_dists: set[str] = set()
        for dist in metadata.distributions():
            dist_name = dist.metadata["Name"] or "<unnamed>"
            # The same distribution can be visible twice on sys.path (e.g. a stale
            # egg-info next to the sources); like importlib.metadata.entry_points, the
            # first one on sys.path wins.
            key = _normalise(dist_name)
            if key in seen_dists:
                continue
            seen_dists.add(key)
            builtin = _normalise(dist_name) == BUILTIN_DIST
            if not builtin and not self.autoload:
                continue
            for ep in dist.entry_points:
                if ep.group not in found:
                    continue
                spec = PluginSpec(ep.group, ep.name, ep.value, dist_name, dist.version or "?")
                other = found[ep.group].get(ep.name)
                if other is not None:
                    if other == spec:
                        continue  # one distribution seen through two paths
                    raise PluginError(
                        f"plugin name {ep.name!r} in group {ep.group!r} is provided twice: "
                        f"by {other.provider} and by {spec.provider}; uninstall one or "
                        f"rename it"
                    )
                found[ep.group][ep.name] = spec
        return found

    def specs(self, group: str) -> dict[str, PluginSpec]:
        """All plugins of ``group`` by name."""
        if group not in GROUPS:
            raise PluginError(f"unknown plugin group {group!r}; {did_you_mean(group, GROUPS)}")
        if self._specs is None:
            self._specs = self._scan()
        return dict(self._specs[group])

    def names(self, group: str) -> list[str]:
        return sorted(self.specs(group))

    def spec(self, group: str, name: str) -> PluginSpec:
        specs = self.specs(group)
        if name not in specs:
            kind = group.split(".", 1)[1].rstrip("s")
            hint = did_you_mean(name, specs)
            extra = ""
            if not self.autoload:
                extra = f" ({AUTOLOAD_ENV} is set: only built-in plugins are loaded)"
            raise PluginError(f"unknown {kind} {name!r}; {hint}{extra}")
        return specs[name]

    def load(self, group: str, name: str) -> Any:
        """Import the object behind ``group``/``name`` and check its role."""
        key = (group, name)
        if key in self._loaded:
            return self._loaded[key]
        spec = self.spec(group, name)
        ep = metadata.EntryPoint(name=spec.name, value=spec.value, group=spec.group)
        try:
            obj = ep.load()
        except Exception as exc:  # import errors in a plugin: say which one
            raise PluginError(
                f"cannot import {group} plugin {name!r} from {spec.provider}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        self._check(group, name, spec, obj)
        self._loaded[key] = obj
        return obj

    def hook(self, name: str) -> Any | None:
        """The callable registered as hook ``name`` (``ftib.hooks``), or None when no
        installed package provides it. The kernel reaches the rest of ftib only this
        way (run report, model limits, native build info), so ``core`` imports no
        other package; what each hook must do is in :data:`ftib.core.interfaces.HOOKS`."""
        if name not in self.specs(HOOKS):
            return None
        return self.load(HOOKS, name)

    @staticmethod
    def _check(group: str, name: str, spec: PluginSpec, obj: Any) -> None:
        base_name = _GROUP_BASES.get(group)
        if base_name is None:
            if not callable(obj):
                kind = group.split(".", 1)[1].rstrip("s")
                raise PluginError(f"{kind} plugin {name!r} from {spec.provider} is not callable")
            return
        from ftib.core import interfaces

        base: type[interfaces._Plugin] = getattr(interfaces, base_name)
        if not (isinstance(obj, type) and issubclass(obj, base)):
            raise PluginError(
                f"{group} plugin {name!r} from {spec.provider} must be a subclass of "
                f"ftib.core.{base_name}, got {obj!r}"
            )
        try:
            obj.check_plugin_class()
        except TypeError as exc:
            raise PluginError(f"{group} plugin {name!r} from {spec.provider}: {exc}") from exc
