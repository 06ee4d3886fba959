"""The OpenAI-compatible speech API (``POST /v1/audio/speech``, ``GET /v1/models``,
``GET /v1/audio/voices``) over the synthesizer, for the many tools that speak OpenAI's
API: ``app`` (the ASGI app and its server), ``routes`` (the handlers), ``speech`` (the
request body's rules), ``errors`` (OpenAI's error shape over the shared mapping)."""

from synth_svc.openai_api.app import HttpApiServer, build_app

__all__ = ["HttpApiServer", "build_app"]
