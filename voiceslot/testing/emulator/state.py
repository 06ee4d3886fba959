"""The emulated providers' state: accounts, voices, slots, budgets, concurrency, history.

Everything the emulator decides lives here as plain Python behind one lock, so the HTTP
routes stay thin and tests can drive and inspect the same object from another thread
(uvicorn runs in a background thread). Rules follow ``providers/README.md``:

- ElevenLabs accounts hold at most ``voice_limit`` custom voices (``voice_limit_reached``)
  and may add at most ``max_voice_add_edits`` voices per month
  (``voice_add_edit_limit_reached``); deleting frees a slot but never restores the budget.
- Optionally (``reject_duplicate_samples``) an account rejects a sample identical to one of
  its live voices' with "You cannot upload the same file twice". Off by default: the exact
  scope of that rule is not documented, and suites clone many voices from one sample.
- Cartesia publishes no slot cap; ``voice_limit`` stays None there unless a test sets one.
- Text-to-speech requests beyond ``max_concurrency`` in flight per account get 429.
- ElevenLabs characters beyond ``character_limit`` get 401 ``quota_exceeded``.

Every voice ever created is kept (deleted ones are marked, not removed), so tests can
assert that a label was cloned exactly once: ``created_labels()``. Every create and delete
also feeds ``truth`` (a ``TruthLedger``): live copies per voiceslot voice id across
generations and live voices per account, their high-water marks, and whether an account
ever held more voices than the capacity voiceslot was given (``watch_capacity``).

Methods raise ``EmulatorError`` (status, code, message); the routes render it in each
provider's error shape. Codes from the README are real; ``bad_request`` and
``max_character_limit_exceeded`` are the emulator's stand-ins for answers the README does
not name.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import random
import string
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from voiceslot.testing.emulator.faults import Decision, FaultScript, Op
from voiceslot.testing.emulator.live_log import LiveLog
from voiceslot.testing.emulator.truth import DEFAULT_LABEL_PREFIX, TruthLedger

ProviderKind = Literal["elevenlabs", "cartesia"]
ELEVENLABS: ProviderKind = "elevenlabs"
CARTESIA: ProviderKind = "cartesia"

DEFAULT_ELEVENLABS_KEY = "el-emulator-key"
DEFAULT_CARTESIA_KEY = "ca-emulator-key"
MAX_PAGE_SIZE = 100
_REQUEST_LOG_LIMIT = 2000


@dataclass(frozen=True)
class Plan:
    voice_limit: int | None
    max_concurrency: int | None


# Slots and TTS concurrency (multilingual) per plan, from providers/README.md.
ELEVENLABS_PLANS: Mapping[str, Plan] = {
    "starter": Plan(voice_limit=10, max_concurrency=3),
    "creator": Plan(voice_limit=30, max_concurrency=5),
    "pro": Plan(voice_limit=160, max_concurrency=10),
    "scale": Plan(voice_limit=660, max_concurrency=15),
    "business": Plan(voice_limit=660, max_concurrency=15),
}
CARTESIA_PLANS: Mapping[str, Plan] = {
    "free": Plan(voice_limit=None, max_concurrency=2),
    "pro": Plan(voice_limit=None, max_concurrency=3),
    "startup": Plan(voice_limit=None, max_concurrency=5),
    "scale": Plan(voice_limit=None, max_concurrency=15),
}


class EmulatorError(Exception):
    """A provider error answer: HTTP ``status``, machine ``code``, human ``message``."""

    def __init__(
        self, status: int, code: str, message: str, *, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


@dataclass
class Account:
    """One provider account. Limits are settings; the counters below them are state."""

    provider: ProviderKind
    api_key: str
    tier: str = "creator"
    voice_limit: int | None = None
    """Custom voices the account may hold; None: no cap."""
    max_voice_add_edits: int | None = None
    """Voice additions per month; None: no cap."""
    max_concurrency: int | None = None
    """TTS requests in flight; None: no cap."""
    concurrency_retry_after: float = 1.0
    """``Retry-After`` seconds on a concurrency 429."""
    can_clone: bool = True
    character_limit: int | None = None
    """ElevenLabs characters per month; None: no cap."""
    reject_duplicate_samples: bool = False
    voice_add_edit_counter: int = 0
    character_count: int = 0
    in_flight: int = 0

    @classmethod
    def elevenlabs(cls, api_key: str, *, plan: str = "creator", **settings: Any) -> Account:
        preset = ELEVENLABS_PLANS[plan]
        values: dict[str, Any] = {
            "voice_limit": preset.voice_limit,
            "max_concurrency": preset.max_concurrency,
            **settings,
        }
        return cls(provider=ELEVENLABS, api_key=api_key, tier=plan, **values)

    @classmethod
    def cartesia(cls, api_key: str, *, plan: str = "startup", **settings: Any) -> Account:
        preset = CARTESIA_PLANS[plan]
        values: dict[str, Any] = {"max_concurrency": preset.max_concurrency, **settings}
        return cls(provider=CARTESIA, api_key=api_key, tier=plan, **values)


def default_accounts() -> list[Account]:
    return [Account.elevenlabs(DEFAULT_ELEVENLABS_KEY), Account.cartesia(DEFAULT_CARTESIA_KEY)]


@dataclass(frozen=True)
class VoiceRecord:
    """A remote voice, live or deleted. Premade/public voices have no owner."""

    seq: int
    voice_id: str
    provider: ProviderKind
    owner: str | None
    name: str
    description: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    language: str = "en"
    category: str = "cloned"
    sample_sha256: str = ""
    created_at: float = 0.0
    deleted_at: float | None = None
    visible_at: float = 0.0
    """``time.monotonic()`` from which list results show it (see ``FaultScript.list_lag_s``)."""

    @property
    def live(self) -> bool:
        return self.deleted_at is None

    def searchable(self) -> str:
        parts = [self.name, self.description, self.category, self.voice_id, *self.labels.values()]
        return "\n".join(parts).lower()


@dataclass(frozen=True)
class RequestRecord:
    """What an adapter sent, kept so tests can check requests against the OpenAPI files."""

    provider: ProviderKind
    op: Op
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    json: Any = None
    form: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Page:
    voices: tuple[VoiceRecord, ...]
    has_more: bool
    total: int


def encode_page_token(seq: int) -> str:
    """An opaque ElevenLabs ``next_page_token``: the last sequence number served. Keyed on
    sequence, not offset, so deleting voices between pages skips nothing."""
    return base64.urlsafe_b64encode(f"after:{seq}".encode()).decode().rstrip("=")


def decode_page_token(token: str) -> int:
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        prefix, _, number = text.partition(":")
        if prefix != "after":
            raise ValueError(token)
        return int(number)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise EmulatorError(400, "invalid_page_token", "next_page_token is not valid") from exc


def select_voices(
    voices: Iterable[VoiceRecord],
    *,
    provider: ProviderKind,
    api_key: str,
    owned_only: bool = False,
    premade_only: bool = False,
    category: str | None = None,
    search: str | None = None,
    now: float | None = None,
) -> list[VoiceRecord]:
    """Live voices visible to an account, filtered as the list endpoints do, by seq;
    with ``now``, voices whose ``visible_at`` is still ahead are left out (list lag)."""
    needle = (search or "").lower()
    chosen = [
        v
        for v in voices
        if v.provider == provider
        and v.live
        and (now is None or v.visible_at <= now)
        and (v.owner == api_key or v.owner is None)
        and not (owned_only and v.owner != api_key)
        and not (premade_only and v.owner is not None)
        and (category is None or v.category == category)
        and (not needle or needle in v.searchable())
    ]
    return sorted(chosen, key=lambda v: v.seq)


def paginate(selected: list[VoiceRecord], *, after_seq: int, page_size: int) -> Page:
    rest = [v for v in selected if v.seq > after_seq]
    return Page(voices=tuple(rest[:page_size]), has_more=len(rest) > page_size, total=len(selected))


def check_clone_allowed(
    account: Account, *, live_owned: list[VoiceRecord], sample_sha: str
) -> None:
    """Raises the provider's answer when ``account`` may not add a voice now."""
    if not account.can_clone:
        raise EmulatorError(
            403,
            "can_not_use_instant_voice_cloning",
            "Your subscription does not include instant voice cloning.",
        )
    if account.voice_limit is not None and len(live_owned) >= account.voice_limit:
        raise EmulatorError(
            400,
            "voice_limit_reached",
            f"You have reached your maximum amount of custom voices "
            f"({len(live_owned)} / {account.voice_limit}). You can upgrade your "
            f"subscription to increase your custom voice limit.",
        )
    if (
        account.max_voice_add_edits is not None
        and account.voice_add_edit_counter >= account.max_voice_add_edits
    ):
        raise EmulatorError(
            400,
            "voice_add_edit_limit_reached",
            f"You have reached your maximum amount of voice add/edit operations "
            f"({account.voice_add_edit_counter} / {account.max_voice_add_edits}) this month.",
        )
    if account.reject_duplicate_samples and any(v.sample_sha256 == sample_sha for v in live_owned):
        raise EmulatorError(400, "bad_request", "You cannot upload the same file twice.")


def check_characters(account: Account, characters: int) -> None:
    if account.character_limit is None:
        return
    remaining = account.character_limit - account.character_count
    if characters > remaining:
        raise EmulatorError(
            401,
            "quota_exceeded",
            f"This request exceeds your quota of {account.character_limit}. You have "
            f"{max(0, remaining)} credits remaining, while {characters} credits are "
            f"required for this request.",
        )


def new_voice_id(provider: ProviderKind, rng: random.Random) -> str:
    if provider == ELEVENLABS:  # ElevenLabs ids: 20 alphanumerics
        return "".join(rng.choices(string.ascii_letters + string.digits, k=20))
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


_PREMADE: tuple[tuple[ProviderKind, str, str], ...] = (
    (ELEVENLABS, "Rachel", "premade"),
    (ELEVENLABS, "Adam", "premade"),
    (CARTESIA, "Barbershop Man", "public"),
    (CARTESIA, "Reading Lady", "public"),
)


class EmulatorState:
    """Thread-safe state of both emulated providers.

    Mutators notify a condition so tests can ``wait_for`` a predicate from another thread
    without polling. ``reset`` starts a new epoch: a request that began before it (e.g. a
    hanging clone) cannot touch the new state.
    """

    def __init__(
        self,
        *,
        accounts: Iterable[Account] | None = None,
        seed: int = 0,
        label_prefix: str = DEFAULT_LABEL_PREFIX,
    ) -> None:
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._seed = seed
        self._initial_accounts = [replace(a) for a in (accounts or default_accounts())]
        self._stream_gate = threading.Event()
        self.closed = threading.Event()
        self.faults = FaultScript(seed=seed)
        """Fault scripting; thread-safe, and the same object across ``reset``."""
        self._epoch = 0
        self._fenced = 0
        self.truth = TruthLedger(label_prefix=label_prefix)
        """Ground truth for invariant checks; read it through ``truth_snapshot``."""
        self.live = LiveLog()
        """Streaming-input (WebSocket) sessions: text received, audio sent, how they ended."""
        for account in self._initial_accounts:
            self.truth.set_capacity(account.provider, account.api_key, account.voice_limit)
        self._init_state()

    def _init_state(self) -> None:
        self._rng = random.Random(self._seed)
        self._accounts: dict[tuple[str, str], Account] = {
            (a.provider, a.api_key): replace(a) for a in self._initial_accounts
        }
        self._voices: dict[str, VoiceRecord] = {}
        self._seq = 0
        self.faults.clear(seed=self._seed)
        self.page_size_cap = MAX_PAGE_SIZE
        self._requests: list[RequestRecord] = []
        self._request_counts: Counter[tuple[str, Op]] = Counter()
        self.truth.clear()
        self.live.clear()
        self._stream_gate.set()
        for provider, name, category in _PREMADE:
            self._add_voice(
                provider=provider, owner=None, name=name, category=category, language="en"
            )

    # -- setup --------------------------------------------------------------------------

    def reset(self) -> None:
        """Back to the initial accounts, no voices, no faults; a new epoch."""
        with self._changed:
            self._epoch += 1
            self._init_state()
            self._changed.notify_all()

    @property
    def fenced_requests(self) -> int:
        """Requests turned away because they arrived before a ``reset`` (never cleared)."""
        with self._lock:
            return self._fenced

    @property
    def epoch(self) -> int:
        """Bumped by ``reset``; a request remembers it when it arrives."""
        with self._lock:
            return self._epoch

    def add_account(self, account: Account) -> Account:
        with self._changed:
            stored = replace(account)
            self._accounts[(account.provider, account.api_key)] = stored
            if (account.provider, account.api_key) not in self.truth.capacity:
                self.truth.set_capacity(account.provider, account.api_key, account.voice_limit)
            self._changed.notify_all()
            return stored

    def watch_capacity(self, provider: ProviderKind, api_key: str, capacity: int | None) -> None:
        """Record instants when the account holds more than ``capacity`` voices (the number
        voiceslot was configured with), whatever the account itself enforces: a test that
        lifts ``voice_limit`` so the provider cannot hide an overshoot still sees it."""
        with self._changed:
            self.truth.set_capacity(provider, api_key, capacity)

    def set_label_prefix(self, prefix: str) -> None:
        """The ``allocator.label_prefix`` whose labels the ledger parses into voice ids."""
        with self._changed:
            self.truth.label_prefix = prefix

    def configure_account(self, provider: ProviderKind, api_key: str, **settings: Any) -> None:
        """Change an account's settings (or counters) at run time."""
        with self._changed:
            account = self._account(provider, api_key)
            for name, value in settings.items():
                if not hasattr(account, name) or name in ("provider", "api_key"):
                    raise AttributeError(f"Account has no setting {name!r}")
                setattr(account, name, value)
            self._changed.notify_all()

    def reset_month(self) -> None:
        """A new billing period: add/edit counters and characters start from zero."""
        with self._changed:
            for account in self._accounts.values():
                account.voice_add_edit_counter = 0
                account.character_count = 0
            self._changed.notify_all()

    def set_page_size_cap(self, size: int) -> None:
        """Serve at most ``size`` voices per page whatever the client asks (to test paging)."""
        if size < 1:
            raise ValueError("page size must be >= 1")
        with self._changed:
            self.page_size_cap = size

    def hold_streams(self) -> None:
        """Streams send their first chunk, then wait until ``release_streams``."""
        self._stream_gate.clear()

    def release_streams(self) -> None:
        self._stream_gate.set()

    def wait_stream_gate(self, timeout: float) -> bool:
        """Blocking: True once streams may continue (or the emulator is closing)."""
        return self._stream_gate.wait(timeout) or self.closed.is_set()

    # -- what the routes call -----------------------------------------------------------

    def authenticate(
        self, provider: ProviderKind, api_key: str | None, *, epoch: int | None = None
    ) -> Account:
        """The account for a key; ``epoch`` (from the request's arrival) fences requests
        that arrived before a ``reset`` (e.g. a hanging clone) out of the new state."""
        with self._lock:
            if epoch is not None and epoch != self._epoch:
                self._fenced += 1
                self._changed.notify_all()
                raise EmulatorError(503, "stale_request", "The emulator was reset meanwhile.")
            account = self._accounts.get((provider, api_key or ""))
        if account is None:
            if provider == ELEVENLABS and not api_key:
                raise EmulatorError(401, "needs_authorization", "Missing xi-api-key header.")
            raise EmulatorError(401, "invalid_api_key", "Invalid API key")
        return account

    def begin(
        self, provider: ProviderKind, op: Op, record: RequestRecord | None = None
    ) -> Decision:
        """Count and log one request and decide its fault."""
        with self._changed:
            self._request_counts[(provider, op)] += 1
            if record is not None:
                self._requests.append(record)
                del self._requests[:-_REQUEST_LOG_LIMIT]
            decision = self.faults.decide(provider, op)
            self._changed.notify_all()
            return decision

    def create_voice(
        self,
        account: Account,
        *,
        name: str,
        sample: bytes,
        description: str = "",
        labels: Mapping[str, str] | None = None,
        language: str = "en",
    ) -> VoiceRecord:
        sha = hashlib.sha256(sample).hexdigest()
        with self._changed:
            self._check_current(account)
            live_owned = self._owned(account)
            check_clone_allowed(account, live_owned=live_owned, sample_sha=sha)
            account.voice_add_edit_counter += 1
            voice = self._add_voice(
                provider=account.provider,
                owner=account.api_key,
                name=name,
                description=description,
                labels=dict(labels or {}),
                language=language,
                sample_sha256=sha,
                visible_at=time.monotonic() + self.faults.list_lag_s,
            )
            self.truth.record(
                "create",
                provider=account.provider,
                account=account.api_key,
                remote_id=voice.voice_id,
                name=voice.name,
            )
            self._changed.notify_all()
            return voice

    def delete_voice(self, account: Account, voice_id: str) -> VoiceRecord:
        with self._changed:
            self._check_current(account)
            voice = self._voices.get(voice_id)
            if voice is None or not voice.live or voice.owner != account.api_key:
                raise self._not_found(voice_id)
            deleted = replace(voice, deleted_at=time.time())
            self._voices[voice_id] = deleted
            self.truth.record(
                "delete",
                provider=account.provider,
                account=account.api_key,
                remote_id=voice_id,
                name=voice.name,
            )
            self._changed.notify_all()
            return deleted

    def get_voice(self, account: Account, voice_id: str) -> VoiceRecord:
        """A live voice the account may use (its own, or a premade/public one)."""
        with self._lock:
            voice = self._voices.get(voice_id)
            if (
                voice is None
                or not voice.live
                or voice.provider != account.provider
                or voice.owner not in (None, account.api_key)
            ):
                raise self._not_found(voice_id)
            return voice

    def seq_of(self, voice_id: str) -> int:
        """The cursor position of a voice (deleted ones too, so cursors stay valid)."""
        with self._lock:
            voice = self._voices.get(voice_id)
        if voice is None:
            raise EmulatorError(400, "invalid_cursor", f"Unknown cursor {voice_id!r}")
        return voice.seq

    def list_voices(
        self,
        account: Account,
        *,
        page_size: int | None,
        after_seq: int = 0,
        owned_only: bool = False,
        premade_only: bool = False,
        category: str | None = None,
        search: str | None = None,
    ) -> Page:
        with self._lock:
            selected = select_voices(
                self._voices.values(),
                provider=account.provider,
                api_key=account.api_key,
                owned_only=owned_only,
                premade_only=premade_only,
                category=category,
                search=search,
                now=time.monotonic(),
            )
            # None: everything at once (unpaginated endpoints ignore the page size cap).
            size = len(selected) + 1 if page_size is None else min(page_size, self.page_size_cap)
            return paginate(selected, after_seq=after_seq, page_size=max(1, size))

    def subscription(self, account: Account) -> dict[str, Any]:
        """The numbers behind ``GET /v1/user/subscription``."""
        with self._lock:
            return {
                "tier": account.tier,
                "voice_slots_used": len(self._owned(account)),
                "voice_limit": account.voice_limit,
                "voice_add_edit_counter": account.voice_add_edit_counter,
                "max_voice_add_edits": account.max_voice_add_edits,
                "can_use_instant_voice_cloning": account.can_clone,
                "character_count": account.character_count,
                "character_limit": account.character_limit,
            }

    def begin_tts(self, account: Account, *, characters: int = 0) -> None:
        """Admit one TTS request: concurrency first (429), then the character quota."""
        with self._changed:
            if account.max_concurrency is not None and account.in_flight >= account.max_concurrency:
                raise EmulatorError(
                    429,
                    "too_many_concurrent_requests",
                    f"Too many concurrent requests. Your current subscription is associated "
                    f"with a maximum of {account.max_concurrency} concurrent requests.",
                    retry_after=account.concurrency_retry_after,
                )
            if account.provider == ELEVENLABS:
                check_characters(account, characters)
                account.character_count += characters
            account.in_flight += 1
            self._changed.notify_all()

    def end_tts(self, account: Account) -> None:
        with self._changed:
            account.in_flight = max(0, account.in_flight - 1)
            self._changed.notify_all()

    # -- inspection (tests) -------------------------------------------------------------

    def wait_for(self, predicate: Callable[[EmulatorState], bool], timeout: float) -> bool:
        """Blocking: wait until ``predicate(self)`` holds; False on timeout. Run it with
        ``asyncio.to_thread`` from async tests."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout)

    def created_voices(self, provider: ProviderKind | None = None) -> list[VoiceRecord]:
        """Every voice ever cloned (deleted ones included), oldest first."""
        with self._lock:
            return sorted(
                (
                    v
                    for v in self._voices.values()
                    if v.owner is not None and provider in (None, v.provider)
                ),
                key=lambda v: v.seq,
            )

    def created_labels(self, provider: ProviderKind | None = None) -> Counter[str]:
        """How many remote voices were ever created per name (where both adapters put the
        label): any count above 1 is a duplicate clone."""
        return Counter(v.name for v in self.created_voices(provider))

    def live_voices(
        self, provider: ProviderKind | None = None, *, api_key: str | None = None
    ) -> list[VoiceRecord]:
        return [v for v in self.created_voices(provider) if v.live and api_key in (None, v.owner)]

    def truth_snapshot(self, *, with_events: bool = True) -> dict[str, Any]:
        """The ledger as JSON-ready data (what ``GET /_emulator/truth`` serves)."""
        with self._lock:
            return self.truth.snapshot(with_events=with_events)

    def delete_as_owner(self, provider: ProviderKind, api_key: str, voice_id: str) -> VoiceRecord:
        """Delete a voice as its account would over the API (no request recorded, no
        fault applied): a test cleaning up what it left behind."""
        with self._changed:
            return self.delete_voice(self._account(provider, api_key), voice_id)

    def rebase_truth(self) -> None:
        """A new observation window for the ledger (see ``TruthLedger.rebase``)."""
        with self._changed:
            self.truth.rebase()

    def account(self, provider: ProviderKind, api_key: str) -> Account:
        """A snapshot of an account's settings and counters."""
        with self._lock:
            return replace(self._account(provider, api_key))

    def request_count(self, provider: ProviderKind | None = None, op: Op | None = None) -> int:
        with self._lock:
            return sum(
                n
                for (p, o), n in self._request_counts.items()
                if provider in (None, p) and op in (None, o)
            )

    def requests(
        self, provider: ProviderKind | None = None, op: Op | None = None
    ) -> list[RequestRecord]:
        with self._lock:
            return [
                r for r in self._requests if provider in (None, r.provider) and op in (None, r.op)
            ]

    # -- internals (lock held) ----------------------------------------------------------

    def _account(self, provider: str, api_key: str) -> Account:
        account = self._accounts.get((provider, api_key))
        if account is None:
            raise KeyError(f"no {provider} account with key {api_key!r}")
        return account

    def _check_current(self, account: Account) -> None:
        if self._accounts.get((account.provider, account.api_key)) is not account:
            # The request began before a reset (or the account was replaced).
            self._fenced += 1
            raise EmulatorError(503, "stale_request", "The account changed during the request.")

    def _owned(self, account: Account) -> list[VoiceRecord]:
        return [
            v
            for v in self._voices.values()
            if v.live and v.owner == account.api_key and v.provider == account.provider
        ]

    def _add_voice(
        self, *, provider: ProviderKind, owner: str | None, name: str, **fields: Any
    ) -> VoiceRecord:
        self._seq += 1
        voice = VoiceRecord(
            seq=self._seq,
            voice_id=new_voice_id(provider, self._rng),
            provider=provider,
            owner=owner,
            name=name,
            created_at=time.time(),
            **fields,
        )
        self._voices[voice.voice_id] = voice
        return voice

    @staticmethod
    def _not_found(voice_id: str) -> EmulatorError:
        return EmulatorError(
            404, "voice_not_found", f"A voice with the voice_id {voice_id} was not found."
        )
