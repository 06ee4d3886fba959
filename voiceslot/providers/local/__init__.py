"""The local engine provider: Coqui TTS (XTTS v2) on this machine's CPU or GPU.

- ``engine.LocalProvider``: the ``base.Provider`` adapter (clone = conditioning latents,
  persisted through storage; synthesis on the worker pool).
- ``pool.EnginePool``: worker threads, one model each, a bounded queue in front.
- ``model_cache.ModelCache``: lazy, thread-safe model loading with a load timeout.
- ``loading``: model directory or Coqui model-manager download (licence-gated), device.
- ``models``: adapters from Coqui models to what a worker drives.
- ``latents``: the stored voice format and the hot-voice LRU.
- ``pcm``: sample decoding and 16-bit PCM output.

Importing this package needs the ``local`` extra (torch); Coqui itself is imported only
when a model loads.
"""

from voiceslot.providers.local.engine import LocalProvider

__all__ = ["LocalProvider"]
