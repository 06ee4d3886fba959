"""The operator's configuration: one frozen object read from ``VOICESLOT_OPERATOR__*``.

The names are the ones the Helm chart sets (``templates/operator-deployment.yaml``):
``VOICESLOT_OPERATOR__ALLOCATOR_TARGET``, ``…__ALLOCATOR_API_KEY``, ``…__CLUSTERWIDE``
("true"/"false"), ``…__NAMESPACES`` (a JSON list), ``…__PEERING`` (empty: standalone),
``…__NAMESPACE_OWNERS`` (a JSON object: tenancy, see the field), ``…__METRICS_PORT``
(default 9090; empty: off) and ``…__LIVENESS_ENDPOINT`` (default
``http://0.0.0.0:8080/healthz``; empty: off). Everything else has a default that suits a production cluster; tests shrink the
intervals. ``POD_ID`` (kopf's identity) and ``POD_NAMESPACE`` are read by kopf and by
:meth:`OperatorConfig.watch_scope` respectively, not here.

The class is a ``BaseSettings`` so that it can be loaded on its own
(``OperatorConfig()``) and also embedded as a section of ``voiceslot.config.Settings``
(``operator: OperatorConfig``), where the same variables reach it through the nested
``__`` delimiter.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "VOICESLOT_OPERATOR__"


class OperatorConfig(BaseSettings):
    """Everything the VoiceSlot operator needs, in one frozen object."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        frozen=True,
        extra="forbid",
        use_attribute_docstrings=True,
    )

    allocator_target: str = "127.0.0.1:50051"
    """gRPC address (host:port) of the allocator whose admin RPCs the operator calls."""
    allocator_api_key: SecretStr | None = None
    """Admin credential presented as ``authorization: Bearer <key>``. None: no
    credential (the allocator then answers UNAUTHENTICATED to every call)."""
    allocator_timeout_s: float = Field(default=15.0, gt=0)
    """Deadline of one admin call; maintenance runs that touch providers take longest."""

    clusterwide: bool = False
    """Watch VoiceSlots in every namespace instead of ``namespaces``."""
    namespaces: tuple[str, ...] = ()
    """Namespaces to watch when not cluster-wide. Empty: ``POD_NAMESPACE``, else
    "default"."""
    peering: str = ""
    """kopf peering object name; empty runs standalone (right for the chart's single
    replica). With a name, kopf's peering CRDs must be installed."""
    priority: int = 0
    """kopf peering priority of this instance (only with ``peering``)."""

    reconcile_interval_s: float = Field(default=30.0, gt=0)
    """How often each VoiceSlot's status is refreshed from the allocator."""
    idle_reclaim_interval_s: float = Field(default=30.0, gt=0)
    """How often expired leases are ended and idle slots reclaimed (where a provider has
    backlog): RunMaintenance(EXPIRE_LEASES, RECLAIM_IDLE)."""
    stuck_reset_interval_s: float = Field(default=30.0, gt=0)
    """How often allocations stuck past the allocator's timeout are reset:
    RunMaintenance(RESET_STUCK)."""
    stuck_after_s: float = Field(default=300.0, gt=0)
    """A voice the allocator reports in Allocating for longer than this shows
    ``Stuck=True`` (``AllocationOverdue``) before the sweep resets it. Set it to the
    allocator's ``allocation_timeout_s``."""
    drift_interval_s: float = Field(default=120.0, gt=0)
    """How often provider state is reconciled with the allocator's (orphans deleted,
    vanished voices marked): RunMaintenance(RECONCILE). Lists every remote voice, so it
    runs less often than the others."""
    repair_drift: bool = True
    """Re-queue a voice whose remote copy vanished while it was ready, so it gets its
    slot back (one clone) instead of waiting for its next use."""
    retry_delay_s: float = Field(default=10.0, gt=0)
    """First delay before a handler that could not finish (allocator unreachable, a
    reclaim that failed at the provider) is tried again; each further try waits twice as
    long (with jitter), up to ``retry_max_delay_s``. Operator-wide loops back off alike."""
    retry_max_delay_s: float = Field(default=300.0, gt=0)
    """Longest delay between two tries of one failing handler or loop."""

    # NoDecode: the JSON is parsed by the validator below, so that an empty variable
    # (what the chart renders for "not set") means the default instead of an error.
    namespace_owners: Annotated[dict[str, tuple[str, ...]], NoDecode] = Field(default_factory=dict)
    """Tenancy: which voice owners the VoiceSlots of each namespace may act for, e.g.
    ``{"team-a": ["alice", "bob"], "ops": ["*"]}`` (``"*"``: any owner). A VoiceSlot
    naming a voice whose owner its namespace may not act for is refused: a ``Refused``
    condition and a Kubernetes event, and no pin, unpin or reclaim.

    When set (non-empty), a namespace that is not listed may act for no owner. When
    unset or ``{}`` the safe default applies: every namespace may act only for the owner
    of its own name (namespace ``alice`` for owner ``alice``). In both cases the
    operator's home namespace (``effective_mirror_namespace``: where mirrored VoiceSlots
    go, ``POD_NAMESPACE`` by default) may act for every owner: the operator writes there
    itself, and only administrators should be able to create VoiceSlots there."""

    delete_lease_wait_s: float = Field(default=600.0, ge=0)
    """How long deleting a VoiceSlot waits for the live leases on its voice to end
    before reclaiming (the finalizer stays, condition ``DeletionBlocked``). Past it, the
    operator gives up waiting: it unpins the voice and lets the VoiceSlot go *without*
    reclaiming, leaving the slot to idle reclaim once the lease ends (event
    ``ReclaimAbandoned``). The annotation ``voiceslot.io/force-delete: "true"`` reclaims
    at once, leases or not."""

    mirror_voice_slots: bool = True
    """Create a VoiceSlot for every slot the allocator lists that none stands for yet,
    and delete mirrored VoiceSlots whose voice is gone. Needs create/delete on
    VoiceSlots (the chart's ``operator.mirrorVoiceSlots``)."""
    mirror_interval_s: float = Field(default=60.0, gt=0)
    """How often the allocator's slots are listed (for mirroring and lease holders)."""
    mirror_namespace: str | None = None
    """Namespace of mirrored VoiceSlots. None: the first watched namespace, else
    ``POD_NAMESPACE``, else "default"."""

    watch_server_timeout_s: float = Field(default=300.0, gt=0)
    """Server-side limit of one watch request; kopf then re-watches. Bounded so a
    silently dropped connection is noticed."""
    watch_client_timeout_s: float = Field(default=330.0, gt=0)
    """Client-side limit of one watch request (a little over the server's)."""
    watch_connect_timeout_s: float = Field(default=10.0, gt=0)
    """TCP/TLS connect timeout of watch requests."""

    metrics_port: int | None = Field(default=9090, ge=1, le=65535)
    """Serve the operator's Prometheus metrics on this port (all interfaces, path
    ``/metrics``); None or an empty variable: off."""
    liveness_endpoint: str | None = "http://0.0.0.0:8080/healthz"
    """kopf's liveness endpoint (the probe's URL as served); None or empty: off."""

    @field_validator("allocator_api_key", mode="after")
    @classmethod
    def _empty_key_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        # The chart renders an empty string when no key is configured.
        return value if value is not None and value.get_secret_value() else None

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _empty_port_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("namespace_owners", mode="before")
    @classmethod
    def _owners_from_json(cls, value: object) -> object:
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return {} if value is None else value

    @field_validator("mirror_namespace", "liveness_endpoint", mode="after")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None

    @model_validator(mode="after")
    def _scope_is_one_of(self) -> OperatorConfig:
        if self.clusterwide and self.namespaces:
            raise ValueError("set either clusterwide or namespaces, not both")
        return self

    @property
    def standalone(self) -> bool:
        return not self.peering

    def watch_scope(self, *, environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
        """The namespaces to watch; empty when cluster-wide."""
        if self.clusterwide:
            return ()
        if self.namespaces:
            return self.namespaces
        env = os.environ if environ is None else environ
        return (env.get("POD_NAMESPACE") or "default",)

    def effective_mirror_namespace(self, *, environ: Mapping[str, str] | None = None) -> str:
        """Where mirrored VoiceSlots go: a namespace the operator watches (and, with the
        chart, holds create rights in)."""
        if self.mirror_namespace:
            return self.mirror_namespace
        if self.namespaces:
            return self.namespaces[0]
        env = os.environ if environ is None else environ
        return env.get("POD_NAMESPACE") or "default"
