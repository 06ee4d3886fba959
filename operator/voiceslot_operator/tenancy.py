"""Tenancy: which voice owners the VoiceSlots of a namespace may act for.

Anyone who may create a VoiceSlot in a watched namespace would otherwise steer any
user's voice through the operator's admin key (pin it, or delete the VoiceSlot and so
reclaim it). The mapping comes from ``OperatorConfig.namespace_owners``; this module
only decides, it never fetches anything.

Rules (documented on the setting as well):

- a namespace's list may hold ``"*"``: any owner;
- with a mapping configured, a namespace that is not listed may act for nobody;
- with none configured, a namespace may act for the owner of its own name only;
- the operator's home namespace (where it mirrors slots) may always act for everyone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

ANY_OWNER = "*"


@dataclass(frozen=True)
class OwnerPolicy:
    """The namespace -> owners mapping, with the defaults applied."""

    namespace_owners: Mapping[str, Sequence[str]] = field(default_factory=dict)
    home_namespace: str | None = None

    def may_act_for(self, namespace: str, owner: str) -> bool:
        if namespace == self.home_namespace:
            return True
        if not self.namespace_owners:
            return bool(owner) and owner == namespace
        allowed = self.namespace_owners.get(namespace, ())
        return ANY_OWNER in allowed or owner in allowed

    def explain(self, namespace: str, owner: str) -> str:
        """Why ``namespace`` may not act for ``owner``, for a condition and an event."""
        if not self.namespace_owners:
            return (
                f"the voice belongs to {owner!r}; namespace {namespace!r} may act only for "
                f"the owner of its own name (no namespace-owners mapping is configured)"
            )
        allowed = list(self.namespace_owners.get(namespace, ()))
        return (
            f"the voice belongs to {owner!r}; namespace {namespace!r} may act for "
            f"{allowed or 'no owner'}"
        )
