"""The one rule set for the string and list fields that callers send, on every RPC of
both services.

Each rule is a small pure function: it returns the value to use (a default filled in, a
list de-duplicated) or raises ``InvalidArgument`` naming the field, with the value quoted
by ``voiceslot.errors.shown`` (short, ASCII) and never copied back in full. The patterns
are public so that configuration (``voiceslot.config``) checks names with the same rule
the wire does. Other rules that belong here by kind live next to their data: ids in
``voiceslot.ids``, page tokens and sizes in ``voiceslot.pagination``, texts and batch
item names in ``voiceslot.text``.

Pure: no I/O, no gRPC.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Hashable, Sequence
from typing import TypeVar

from voiceslot.errors import InvalidArgument, shown

T = TypeVar("T", bound=Hashable)

USER_NAME_PATTERN = r"^[A-Za-z0-9._@-]{1,128}$"
"""A user (an API key's ``user``, a voice's ``owner``): stored, logged, used in keys."""
PROVIDER_NAME_PATTERN = r"^[a-z][a-z0-9-]{0,39}$"
"""A configured provider account's name."""
LANGUAGE_TAG_MAX = 35
"""RFC 5646 §4.4.1: 35 characters hold every tag in practical use."""

_USER_NAME = re.compile(USER_NAME_PATTERN)
_PROVIDER_NAME = re.compile(PROVIDER_NAME_PATTERN)
# A BCP 47 language tag in the shape engines take: a 2-3 letter primary language, then
# subtags of 2-8 letters or digits (script, region, variant): "en", "pt-BR", "zh-Hans-CN".
_LANGUAGE_TAG = re.compile(r"[a-z]{2,3}(?:-[A-Za-z0-9]{2,8})*")
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,200}")


def language_tag(field: str, value: str, *, default: str) -> str:
    """``value``, or ``default`` when empty, if it is a language tag of at most
    ``LANGUAGE_TAG_MAX`` characters."""
    if not value:
        return default
    if len(value) > LANGUAGE_TAG_MAX or not _LANGUAGE_TAG.fullmatch(value):
        raise InvalidArgument(
            field, f"{shown(value)} is not a BCP 47 language tag (like en, pt-BR, zh-Hans)"
        )
    return value


def user_name(field: str, value: str) -> str:
    """``value`` if it is a user name: 1..128 of ``A-Z a-z 0-9 . _ @ -``."""
    if not _USER_NAME.fullmatch(value):
        raise InvalidArgument(
            field, f"{shown(value)} is not a user name (1..128 of A-Z a-z 0-9 . _ @ -)"
        )
    return value


def provider_name(field: str, value: str, *, known: Collection[str] | None = None) -> str:
    """``value`` if it is a provider name and, when ``known`` is given, one of them."""
    if not _PROVIDER_NAME.fullmatch(value):
        raise InvalidArgument(
            field, f"{shown(value)} is not a provider name (a-z, 0-9 and '-', at most 40)"
        )
    if known is not None and value not in known:
        raise InvalidArgument(
            field, f"unknown provider {shown(value)}; known: {', '.join(sorted(known))}"
        )
    return value


def idempotency_key(field: str, value: str) -> str | None:
    """``value`` if it is an idempotency key (1..200 printable ASCII), None when empty."""
    if not value:
        return None
    if not _IDEMPOTENCY_KEY.fullmatch(value):
        raise InvalidArgument(field, "must be 1..200 printable ASCII characters")
    return value


def label(field: str, value: str, *, max_chars: int) -> str:
    """``value`` if it is free text for people (a display name, a lease holder): at most
    ``max_chars`` printable characters, so it shows as written wherever it is listed."""
    if len(value) > max_chars:
        raise InvalidArgument(field, f"is {len(value)} characters long; the limit is {max_chars}")
    if not value.isprintable():
        raise InvalidArgument(field, "must be printable characters (no controls or line breaks)")
    return value


def display_name(field: str, value: str, *, max_chars: int = 100) -> str:
    """``value`` without surrounding whitespace: 1..``max_chars`` printable characters."""
    name = value.strip()
    if not name:
        raise InvalidArgument(field, "is empty")
    return label(field, name, max_chars=max_chars)


def unique_list(field: str, values: Sequence[T], *, max_items: int) -> list[T]:
    """``values`` in order without repeats; ``InvalidArgument`` when more than
    ``max_items`` were sent (repeats included: the size of the request is what is bounded)."""
    if len(values) > max_items:
        raise InvalidArgument(field, f"has {len(values)} entries; the limit is {max_items}")
    return list(dict.fromkeys(values))
