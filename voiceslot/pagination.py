"""Opaque keyset page tokens: the sort key of the last item of a page, base64-encoded.

Keyset (not offset) pagination stays correct while rows are added between pages.
"""

from __future__ import annotations

import base64
import json

from voiceslot.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
# Tokens this server issues are a few dozen characters; anything much longer is not one,
# and is refused before it is decoded.
MAX_TOKEN_CHARS = 1024


def page_size(requested: int) -> int:
    if requested < 0 or requested > MAX_PAGE_SIZE:
        raise InvalidArgument("page_size", f"must be 0..{MAX_PAGE_SIZE}")
    return requested or DEFAULT_PAGE_SIZE


def encode_token(*key: str | int) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode()


def decode_token(token: str, *, arity: int) -> list[str | int] | None:
    if not token:
        return None
    if len(token) > MAX_TOKEN_CHARS:
        raise InvalidArgument("page_token", "not a token this server issued")
    try:
        key = json.loads(base64.urlsafe_b64decode(token.encode()))
    except ValueError:
        raise InvalidArgument("page_token", "not a token this server issued") from None
    if not isinstance(key, list) or len(key) != arity:
        raise InvalidArgument("page_token", "not a token this server issued")
    return key
