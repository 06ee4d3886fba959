"""Who is calling: a principal resolved from a credential. Pure; the gRPC interceptor in
``voiceslot.rpc.interceptors`` resolves it and the services receive it."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Role = Literal["user", "admin"]


@dataclass(frozen=True)
class Principal:
    user: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def owner_filter(self) -> str | None:
        """The owner a query must be limited to: the user's own, or None for admins."""
        return None if self.is_admin else self.user


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyTable:
    """Maps credentials to principals. Keys are held as SHA-256 digests and compared in
    constant time, so neither memory dumps nor timing reveal them."""

    def __init__(self, entries: Iterable[tuple[str, Principal]]) -> None:
        self._entries = [(_digest(k), p) for k, p in entries]

    def __len__(self) -> int:
        return len(self._entries)

    def resolve(self, credential: str) -> Principal | None:
        digest = _digest(credential)
        found = None
        for known, principal in self._entries:
            # No early exit: every lookup costs the same.
            if hmac.compare_digest(known, digest):
                found = principal
        return found


def generate_key() -> str:
    return "vsk_" + secrets.token_urlsafe(32)
