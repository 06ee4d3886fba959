"""The few Kubernetes writes kopf has no API for: creating and deleting VoiceSlots.

Mirroring the allocator's slots needs ``create`` and ``delete``; everything else (status,
finalizers, events) goes through kopf. The calls use the very credentials kopf logged in
with (the ``ConnectionInfo`` the login handler returned), so the operator has one identity
and one place to configure it; a re-login (rotated token) is picked up on the next call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import kopf

GROUP = "voiceslot.io"
VERSION = "v1alpha1"
PLURAL = "voiceslots"
KIND = "VoiceSlot"
API_VERSION = f"{GROUP}/{VERSION}"


class KubeError(Exception):
    """A Kubernetes API call failed (other than the expected 404/409)."""


class VoiceSlotApi:
    """List, create and delete VoiceSlots with kopf's current credentials."""

    def __init__(
        self,
        connection: Callable[[], kopf.ConnectionInfo | None],
        *,
        timeout_s: float = 30.0,
    ) -> None:
        self._connection = connection
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._session_for: kopf.ConnectionInfo | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._session = self._session_for = None

    async def _http(self) -> tuple[aiohttp.ClientSession, str]:
        info = self._connection()
        if info is None:
            raise KubeError("not logged in to Kubernetes yet")
        if self._session is None or self._session_for is not info:
            await self.close()
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=info.as_ssl_context()),
                headers=info.as_http_headers(),
                proxy=info.proxy_url,
                trust_env=info.trust_env,
                timeout=self._timeout,
            )
            self._session_for = info
        return self._session, info.server.rstrip("/")

    @staticmethod
    def _path(namespace: str | None, name: str | None = None) -> str:
        path = f"/apis/{GROUP}/{VERSION}"
        if namespace:
            path += f"/namespaces/{namespace}"
        path += f"/{PLURAL}"
        return f"{path}/{name}" if name else path

    async def list(self, namespace: str | None) -> list[dict[str, Any]]:
        """VoiceSlots in ``namespace`` (every namespace when None)."""
        session, server = await self._http()
        async with session.get(server + self._path(namespace)) as response:
            if response.status >= 400:
                raise KubeError(f"list voiceslots: HTTP {response.status}: {await response.text()}")
            body = await response.json()
        return list(body.get("items") or [])

    async def create(self, namespace: str, body: dict[str, Any]) -> bool:
        """Create a VoiceSlot; False when one of that name already exists."""
        session, server = await self._http()
        async with session.post(server + self._path(namespace), json=body) as response:
            if response.status == 409:
                return False
            if response.status >= 400:
                raise KubeError(
                    f"create voiceslot: HTTP {response.status}: {await response.text()}"
                )
        return True

    async def delete(self, namespace: str, name: str) -> bool:
        """Delete a VoiceSlot (its finalizer still runs); False when already gone."""
        session, server = await self._http()
        async with session.delete(server + self._path(namespace, name)) as response:
            if response.status == 404:
                return False
            if response.status >= 400:
                raise KubeError(
                    f"delete voiceslot: HTTP {response.status}: {await response.text()}"
                )
        return True
