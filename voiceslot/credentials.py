"""Credentials for the embedded default.

With no API keys configured, ``voiceslot serve`` creates one admin key in
``<data_dir>/credentials.json`` (mode 0600) and the CLI on the same machine reads it, so
the first run needs no setup and is still never unauthenticated.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from voiceslot.auth import KeyTable, Principal, generate_key
from voiceslot.config import Settings

LOCAL_ADMIN_USER = "local-admin"


def credentials_path(data_dir: Path) -> Path:
    return data_dir / "credentials.json"


def ensure_local_admin_key(data_dir: Path) -> str:
    path = credentials_path(data_dir)
    if path.exists():
        return str(json.loads(path.read_text())["api_key"])
    data_dir.mkdir(parents=True, exist_ok=True)
    key = generate_key()
    # O_EXCL: two servers starting at once cannot both write a different key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return str(json.loads(path.read_text())["api_key"])
    with os.fdopen(fd, "w") as f:
        json.dump({"api_key": key, "user": LOCAL_ADMIN_USER, "role": "admin"}, f)
    return key


def read_local_key(data_dir: Path) -> str | None:
    path = credentials_path(data_dir)
    if not path.exists():
        return None
    return str(json.loads(path.read_text())["api_key"])


INTERNAL_USER = "voiceslot-internal"


def key_table(settings: Settings, *, internal_key: str | None = None) -> KeyTable:
    """Configured keys (or, when none are, the local admin key, created on first use),
    plus ``internal_key``: a per-process admin key for one service calling another inside
    the same process (the synthesizer's batch worker), never written anywhere."""
    if settings.auth.api_keys:
        entries = [
            (k.key.get_secret_value(), Principal(k.user, k.role)) for k in settings.auth.api_keys
        ]
    else:
        entries = [
            (ensure_local_admin_key(settings.data_dir), Principal(LOCAL_ADMIN_USER, "admin"))
        ]
    if internal_key:
        entries.append((internal_key, Principal(INTERNAL_USER, "admin")))
    return KeyTable(entries)
