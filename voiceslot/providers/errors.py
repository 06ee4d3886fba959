"""The provider error taxonomy.

Every adapter translates its provider's HTTP statuses and error bodies into exactly one of
these, so the allocator's policies (retry, back off, dead-letter, open the breaker) never
look at a provider's wire format. ``retryable`` says whether the same call may succeed later.
"""

from __future__ import annotations


class ProviderError(Exception):
    """Base class. ``retry_after`` is the provider's hint in seconds, when it gave one."""

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        status_code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.status_code = status_code
        self.retry_after = retry_after


class CapacityFull(ProviderError):
    """The account holds its maximum number of custom voices."""

    retryable = True


class AddEditBudgetSpent(ProviderError):
    """The monthly voice add/edit cap is used up; deleting voices does not restore it."""


class RateLimited(ProviderError):
    """429: too many requests or concurrent requests; wait ``retry_after`` seconds."""

    retryable = True


class VoiceNotFound(ProviderError):
    """The remote voice id is unknown to the provider."""


class AuthError(ProviderError):
    """Bad or missing credentials, or the plan forbids the operation."""


class InvalidInput(ProviderError):
    """The provider rejected the request's content (sample, text, parameters)."""


class Transient(ProviderError):
    """5xx, timeouts, connection errors: the outcome is unknown and may be retried —
    for a clone only after looking the voice up by its label."""

    retryable = True


class Fatal(ProviderError):
    """Anything else that retrying will not fix."""
