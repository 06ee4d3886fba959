"""Builds the storage adapter the settings name: local files (the embedded default) or
S3. The one place that knows which adapters exist."""

from __future__ import annotations

from voiceslot.config import Settings
from voiceslot.storage.base import Storage
from voiceslot.storage.local import LocalStorage


def build_storage(settings: Settings) -> Storage:
    """Local storage under ``settings.storage_root``, or S3 per ``settings.storage``."""
    config = settings.storage
    if config.kind == "local":
        return LocalStorage(settings.storage_root)
    if not config.bucket:
        raise ValueError("storage.bucket is required when storage.kind is s3")
    # Imported here so the embedded deployment never pays for loading boto3.
    from voiceslot.storage.s3 import S3Storage

    return S3Storage(
        bucket=config.bucket,
        prefix=config.prefix,
        endpoint_url=config.endpoint_url,
        region=config.region,
    )
