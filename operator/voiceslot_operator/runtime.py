"""What the handlers and loops of one operator share: configuration, metrics, the
allocator client, kopf's credentials, and the latest allocator listings.

Only caches of the allocator's answers live here (each refreshed by a loop, each
optional): nothing the status depends on is kept only in this process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import kopf

from voiceslot_operator.client import AllocatorAdmin, SlotView
from voiceslot_operator.conditions import VoiceSnapshot
from voiceslot_operator.kube import VoiceSlotApi
from voiceslot_operator.metrics import OperatorMetrics
from voiceslot_operator.settings import OperatorConfig
from voiceslot_operator.tenancy import OwnerPolicy

AdminFactory = Callable[[OperatorConfig], AllocatorAdmin]


def default_admin(config: OperatorConfig) -> AllocatorAdmin:
    key = config.allocator_api_key.get_secret_value() if config.allocator_api_key else None
    return AllocatorAdmin(
        config.allocator_target, api_key=key, timeout_s=config.allocator_timeout_s
    )


class OperatorRuntime:
    """Shared state of one operator instance."""

    def __init__(
        self,
        config: OperatorConfig,
        *,
        metrics: OperatorMetrics,
        admin_factory: AdminFactory | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.environ = environ
        self.policy = OwnerPolicy(
            dict(config.namespace_owners),
            home_namespace=config.effective_mirror_namespace(environ=environ),
        )
        self._admin_factory = admin_factory or default_admin
        self._admin: AllocatorAdmin | None = None
        self.connection: kopf.ConnectionInfo | None = None
        self.logged_in = asyncio.Event()
        self.kube = VoiceSlotApi(lambda: self.connection)
        self.slots: dict[str, SlotView] = {}
        # Every voice as of the last ListVoices sweep; None until the first one.
        self.voices: dict[str, VoiceSnapshot] | None = None

    @property
    def admin(self) -> AllocatorAdmin:
        if self._admin is None:  # created lazily: it must live in the operator's loop
            self._admin = self._admin_factory(self.config)
        return self._admin

    def allocator_reachable(self, reachable: bool) -> None:
        self.metrics.allocator_up.set(1 if reachable else 0)

    async def close(self) -> None:
        if self._admin is not None:
            await self._admin.close()
            self._admin = None
        await self.kube.close()
