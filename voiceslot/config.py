"""Configuration: one typed, frozen settings object read from the environment and an
optional YAML file.

Precedence (highest first): constructor arguments, ``VOICESLOT_*`` environment variables
(nested with ``__``, e.g. ``VOICESLOT_STORAGE__KIND=s3``), the YAML file named by
``VOICESLOT_CONFIG`` or ``--config``, then the defaults below. The defaults are the
embedded deployment: SQLite and local files under ``data_dir`` and the local engine.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from voiceslot.eventloop import EventLoopChoice
from voiceslot.validation import PROVIDER_NAME_PATTERN, USER_NAME_PATTERN

_FROZEN = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

DEFAULT_XTTS_MODEL = "tts_models/multilingual/multi-dataset/xtts_v2"


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "voiceslot"


class ProviderConfig(BaseModel):
    """One provider account."""

    model_config = _FROZEN

    name: str = Field(pattern=PROVIDER_NAME_PATTERN)
    """Account name, unique in the deployment; voices name it to choose where to clone."""
    kind: Literal["local", "elevenlabs", "cartesia"]
    """Which adapter serves it."""
    capacity: int | None = Field(default=None, ge=1)
    """Voice slots this account may hold. None: ask the provider (ElevenLabs' subscription)
    or, for the local engine, use ``max_hot_voices``."""
    api_key: SecretStr | None = None
    """Credential for remote providers."""
    base_url: str | None = None
    """Override the provider's API base, e.g. the loopback emulator."""
    model_id: str | None = None
    """Provider TTS model (e.g. ``eleven_multilingual_v2``, ``sonic-2``); None: adapter default."""
    timeout_s: float = Field(default=30.0, gt=0)
    """Per-call HTTP timeout."""
    api_version: str = "2025-04-16"
    """Cartesia-Version header."""
    # Local engine only.
    model_dir: Path | None = None
    """A local Coqui model directory (config.json + checkpoint). None: fetch ``model_name``
    with Coqui's model manager on first use (XTTS v2 needs COQUI_TOS_AGREED=1)."""
    model_name: str = DEFAULT_XTTS_MODEL
    """Coqui model name fetched when ``model_dir`` is unset."""
    workers: int = Field(default=1, ge=1, le=64)
    """Engine workers, each owning one model copy: concurrent generations on this engine."""
    queue_size: int = Field(default=64, ge=1)
    """Synthesis requests that may wait for a worker before callers are told to back off."""
    device: str = "auto"
    """torch device: "auto" picks CUDA when present, else CPU."""
    load_timeout_s: float = Field(default=900.0, gt=0)
    """Waiters give up on a model load after this long instead of hanging."""
    preload: bool = False
    """Load the model at start-up instead of on first use."""
    max_hot_voices: int = Field(default=256, ge=1)
    """Local "slots": cloned speakers (conditioning latents) kept ready."""

    @model_validator(mode="after")
    def _remote_needs_key(self) -> ProviderConfig:
        if self.kind != "local" and self.api_key is None:
            raise ValueError(f"provider {self.name!r} ({self.kind}) needs an api_key")
        return self


class StorageConfig(BaseModel):
    """Where samples, cloned local voices and rendered audio live."""

    model_config = _FROZEN

    kind: Literal["local", "s3"] = "local"
    root: Path | None = None
    """Local storage root; None: ``<data_dir>/storage``."""
    bucket: str | None = None
    """S3 bucket (kind s3)."""
    prefix: str = ""
    """Key prefix inside the bucket."""
    endpoint_url: str | None = None
    """S3-compatible endpoint; None: AWS."""
    region: str | None = None
    presign_ttl_s: int = Field(default=3600, ge=60, le=7 * 86400)
    """Lifetime of download URLs."""
    retention_days: float | None = Field(default=None, gt=0)
    """Rendered audio older than this is deleted; None keeps it forever."""


class ApiKeyConfig(BaseModel):
    """A credential accepted as ``x-api-key`` or ``authorization: Bearer``."""

    model_config = _FROZEN

    key: SecretStr
    user: str = Field(pattern=USER_NAME_PATTERN)
    role: Literal["user", "admin"] = "user"


class AuthConfig(BaseModel):
    model_config = _FROZEN

    api_keys: tuple[ApiKeyConfig, ...] = ()
    """Accepted credentials. Empty: ``voiceslot serve`` creates an admin key in
    ``<data_dir>/credentials.json`` that the CLI on the same machine picks up."""
    rate_limit_per_second: float = Field(default=200.0, gt=0)
    """Calls per second per caller, per replica; RESOURCE_EXHAUSTED beyond it."""
    rate_limit_burst: int = Field(default=400, ge=1)


class AllocatorConfig(BaseModel):
    model_config = _FROZEN

    database_url: str | None = None
    """SQLAlchemy URL; None: SQLite at ``<data_dir>/allocator.sqlite3``."""
    label_prefix: str = Field(default="vs-", pattern=r"^[a-z0-9-]{1,20}$")
    """Prefix of remote voice labels; reconciliation only touches voices carrying it."""
    default_lease_ttl_s: float = Field(default=60.0, gt=0)
    max_lease_ttl_s: float = Field(default=600.0, gt=0)
    sample_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    """Largest accepted voice sample."""
    max_attempts: int = Field(default=5, ge=1)
    """Allocation attempts before a request is dead-lettered."""
    backoff_base_s: float = Field(default=1.0, gt=0)
    backoff_max_s: float = Field(default=300.0, gt=0)
    allocation_timeout_s: float = Field(default=300.0, gt=0)
    """An allocation in ALLOCATING longer than this is stuck and gets reset."""
    clone_settle_s: float = Field(default=10.0, ge=0)
    """After a clone whose answer never came (a timeout, a dropped connection) and whose
    label the provider does not list yet, how long the allocation waits, holding its slot,
    before looking again: a clone the provider finishes late is adopted, not cloned twice."""
    per_user_max_queued: int = Field(default=100, ge=1)
    """Queued plus in-flight allocations one user may have."""
    dispatch_interval_s: float = Field(default=0.5, gt=0)
    """How often the dispatcher polls the queue when nothing woke it."""
    dispatch_batch: int = Field(default=32, ge=1)
    maintenance_interval_s: float | None = Field(default=30.0, gt=0)
    """Built-in maintenance loop period; None when the operator drives maintenance."""
    idle_reclaim_after_s: float = Field(default=900.0, gt=0)
    """A READY voice unused this long may be reclaimed when its provider has backlog."""
    reclaim_policy: Literal["adaptive", "lru"] = "adaptive"
    """Which voice to evict when a provider is full and requests wait: ``adaptive`` ranks
    voices by their expected use from the history every replica shares and may let a
    request wait for a live session to end; ``lru`` evicts the least recently used and
    never waits (see the README)."""
    reclaim_max_wait_s: float = Field(default=30.0, ge=0)
    """Longest the adaptive policy lets a request wait for a voice's live session to end
    before it evicts one anyway (0: never wait)."""
    add_edit_reserve: int = Field(default=0, ge=0)
    """Add/edit operations (ElevenLabs' monthly clone cap) no reclaim may spend: evicting
    stops while the provider's remaining budget is at or below this."""
    budget_refresh_s: float = Field(default=300.0, gt=0)
    """How often maintenance asks each provider for its remaining add/edit budget."""
    gauge_interval_s: float | None = Field(default=15.0, gt=0)
    """How often the allocator refreshes its state gauges (backlog, slots, breaker, stuck
    allocations, add/edit budget) from the database; None: only when ListProviders runs."""


class LiveConfig(BaseModel):
    """Bounds of a live turn (``SynthesizeLive``): each exceeded ends the call with a status
    naming the setting (``synth.live.<name>``), so a client that stalls or floods never
    holds a voice and an engine indefinitely."""

    model_config = _FROZEN

    max_fragment_chars: int = Field(default=2000, ge=1)
    """Longest text fragment one message may carry; longer is INVALID_ARGUMENT."""
    max_buffered_chars: int = Field(default=5000, ge=1)
    """Text received whose audio has not started yet (waiting for its sentence to end, or
    for the engine); more is RESOURCE_EXHAUSTED. The same amount one Synthesize call may
    hand over at once (``max_text_chars``' default)."""
    max_fragments_per_s: float = Field(default=100.0, gt=0)
    """Messages per second a turn may send, in bursts of as many; faster is
    RESOURCE_EXHAUSTED (an LLM streams tens of tokens a second)."""
    idle_flush_s: float = Field(default=1.5, gt=0)
    """After this long without a message, what is buffered is spoken even mid-sentence
    (an LLM that paused should not leave its listener in silence)."""
    idle_end_s: float = Field(default=30.0, gt=0)
    """After this long without a message (the first, ``start``, included), the turn ends:
    what was received is spoken, then DEADLINE_EXCEEDED."""
    max_turn_s: float = Field(default=600.0, gt=0)
    """Longest a turn may last from its start; longer is DEADLINE_EXCEEDED at once."""


class HttpApiConfig(BaseModel):
    """The OpenAI-compatible HTTP API (``POST /v1/audio/speech``, ``GET /v1/models``,
    ``GET /v1/audio/voices``) that ``voiceslot serve`` runs beside gRPC, in the same
    process, with the same keys and rate limits."""

    model_config = _FROZEN

    enabled: bool = False
    """Serve it on ``host``:``port``; off: only gRPC is served."""
    host: str = "127.0.0.1"
    """Address to listen on (0.0.0.0 for every interface)."""
    port: int = Field(default=8080, ge=0, le=65535)
    """TCP port; 0 picks a free one."""
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    """Largest request body; larger is HTTP 413 before it is read further."""


class SynthConfig(BaseModel):
    model_config = _FROZEN

    database_url: str | None = None
    """SQLAlchemy URL; None: SQLite at ``<data_dir>/synth.sqlite3``."""
    allocator_target: str | None = None
    """gRPC address of the allocator; None: the same server (``voiceslot serve``)."""
    allocator_api_key: SecretStr | None = None
    """Credential the synthesizer presents to the allocator; None: the caller's own."""
    max_text_chars: int = Field(default=5000, ge=1)
    """Longest text per request; longer is INVALID_ARGUMENT, never truncated."""
    max_batch_items: int = Field(default=1000, ge=1)
    max_unfinished_jobs_per_user: int = Field(default=10, ge=1)
    """Batch jobs a user (not an admin) may have pending or running at once; one more is
    RESOURCE_EXHAUSTED until one finishes or is cancelled."""
    batch_workers: int = Field(default=2, ge=0)
    """Concurrent batch items per replica; 0 disables the batch worker."""
    item_max_attempts: int = Field(default=4, ge=1)
    item_lease_s: float = Field(default=60.0, gt=0)
    """How long a batch item's claim lasts unrenewed: a dead replica's items are taken
    over after this."""
    retention_every_s: float = Field(default=3600.0, gt=0)
    """Period of the rendered-audio retention sweep (see storage.retention_days)."""
    default_encoding: Literal["wav", "pcm16", "mp3", "opus", "mulaw", "alaw"] = "wav"
    live: LiveConfig = LiveConfig()
    """Bounds of live turns (``SynthesizeLive``)."""
    http: HttpApiConfig = HttpApiConfig()
    """The OpenAI-compatible HTTP API."""


class Settings(BaseSettings):
    """Everything configurable, in one frozen object."""

    model_config = SettingsConfigDict(
        env_prefix="VOICESLOT_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
        use_attribute_docstrings=True,
    )

    data_dir: Path = Field(default_factory=default_data_dir)
    """Home of the embedded default: SQLite files, local storage, credentials."""
    listen: str = "127.0.0.1:50051"
    """gRPC listen address (host:port; port 0 picks a free one)."""
    metrics_port: int | None = None
    """Serve Prometheus metrics on this port; None: off."""
    workers: int = Field(default=1, ge=1, le=64)
    """Server processes sharing the listen port (SO_REUSEPORT), so one replica uses all its
    cores; more than one needs PostgreSQL. ``voiceslot serve --workers`` overrides it."""
    event_loop: EventLoopChoice = "auto"
    """The servers' event loop: ``auto`` is uvloop where installed (less CPU per call),
    else asyncio's own; ``asyncio`` keeps the standard loop (``voiceslot.eventloop``)."""
    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    """On SIGTERM, in-flight calls get this long to finish."""
    migrate_on_start: bool = True
    """Bring each service's database schema to head at start-up (the embedded default).
    False: a separate step migrates (``voiceslot migrate``, the Helm chart's Job), and a
    service only waits, up to ``schema_wait_s``, for the schema its code needs."""
    schema_wait_s: float = Field(default=300.0, gt=0)
    """With ``migrate_on_start`` off: how long a starting service waits for its schema
    before it fails (and Kubernetes restarts it)."""
    default_provider: str = "local"
    providers: tuple[ProviderConfig, ...] = (ProviderConfig(name="local", kind="local"),)
    storage: StorageConfig = StorageConfig()
    auth: AuthConfig = AuthConfig()
    allocator: AllocatorConfig = AllocatorConfig()
    synth: SynthConfig = SynthConfig()
    config_file: Path | None = None
    """YAML file read below the environment; also settable as VOICESLOT_CONFIG."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("VOICESLOT_CONFIG")
        if config_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)

    @model_validator(mode="after")
    def _check_providers(self) -> Settings:
        names = [p.name for p in self.providers]
        if len(set(names)) != len(names):
            raise ValueError(f"provider names must be unique: {names}")
        if self.default_provider not in names:
            raise ValueError(f"default_provider {self.default_provider!r} is not in {names}")
        return self

    def provider(self, name: str) -> ProviderConfig | None:
        return next((p for p in self.providers if p.name == name), None)

    @property
    def storage_root(self) -> Path:
        return self.storage.root or self.data_dir / "storage"

    @property
    def allocator_database_url(self) -> str:
        return (
            self.allocator.database_url
            or f"sqlite+aiosqlite:///{self.data_dir / 'allocator.sqlite3'}"
        )

    @property
    def synth_database_url(self) -> str:
        return self.synth.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'synth.sqlite3'}"


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read settings; ``config_file`` (e.g. from ``--config``) takes the place of
    ``VOICESLOT_CONFIG``."""
    if config_file is not None:
        os.environ["VOICESLOT_CONFIG"] = str(config_file)
    return Settings(**overrides)
