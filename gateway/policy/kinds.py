"""The registry of policy kinds: built-ins and plugins, from one entry-point group.

Every kind, the gateway's own included, is an entry in the
``gateway.policy_kinds`` group pointing at a ``PolicyKind`` (or at a module
exposing ``KIND``), so a third-party kind registers exactly as a built-in.
"""

from __future__ import annotations

from gateway.contract.kind import PolicyKind
from gateway.contract.policy import PolicyBase
from gateway.errors import ConfigError
from gateway.plugins import POLICY_KINDS, load_group


class Registry:
    def __init__(self) -> None:
        self._kinds: dict[str, PolicyKind] = {}

    def register(self, kind: PolicyKind) -> None:
        if kind.name in self._kinds and self._kinds[kind.name] is not kind:
            raise ConfigError(f"policy kind {kind.name!r} is registered twice")
        self._kinds[kind.name] = kind

    def get(self, name: str) -> PolicyKind:
        return self._kinds[name]

    def names(self) -> list[str]:
        return sorted(self._kinds)

    def configs(self) -> list[type[PolicyBase]]:
        return [self._kinds[n].config for n in self.names()]

    def __contains__(self, name: str) -> bool:
        return name in self._kinds


_default: Registry | None = None


def default_registry() -> Registry:
    """The process-wide registry of every installed kind."""
    global _default
    if _default is None:
        reg = Registry()
        for name, obj in load_group(POLICY_KINDS):
            kind = obj if isinstance(obj, PolicyKind) else obj.KIND
            if kind.name != name:
                raise ConfigError(
                    f"entry point {name} of {POLICY_KINDS} declares kind {kind.name!r}; "
                    "the two names must match"
                )
            reg.register(kind)
        if not reg.names():
            # the gateway's own kinds are entry points too: a source tree that was
            # never installed has none, and every policy would be an unknown kind
            raise ConfigError(
                f"no policy kinds are installed in the {POLICY_KINDS} entry-point group; "
                "install the gateway (pip install -e .) so its entry points are registered"
            )
        _default = reg
    return _default
