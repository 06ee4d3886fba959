"""``--speed`` and the providers' voice settings as CLI flags, for every command that
speaks: one decorator that turns them into the request's ``SpeechOptions``.

Unset flags stay unset (the engine's defaults); the server checks each against the
voice's engine and answers INVALID_ARGUMENT naming the option it lacks, so the CLI does
not second-guess which engine a voice is on.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from voiceslot.v1 import synthesizer_pb2 as spb


def speech_options(
    *,
    speed: float | None = None,
    stability: float | None = None,
    similarity_boost: float | None = None,
    style: float | None = None,
    speaker_boost: bool | None = None,
    volume: float | None = None,
    emotion: str | None = None,
) -> spb.SpeechOptions:
    """The wire options for the flags given (``None``: not given)."""
    options = spb.SpeechOptions(speed=speed or 0.0)
    for name, value in (
        ("stability", stability),
        ("similarity_boost", similarity_boost),
        ("style", style),
        ("use_speaker_boost", speaker_boost),
    ):
        if value is not None:
            setattr(options.elevenlabs, name, value)
    if volume is not None:
        options.cartesia.volume = volume
    if emotion:
        options.cartesia.emotion = emotion
    return options


def speech_option_flags(command: Callable[..., Any]) -> Callable[..., Any]:
    """Adds the flags and hands ``command`` one ``options`` argument instead."""

    @functools.wraps(command)
    def with_options(
        *args: Any,
        speed: float | None,
        stability: float | None,
        similarity_boost: float | None,
        style: float | None,
        speaker_boost: bool | None,
        volume: float | None,
        emotion: str | None,
        **kwargs: Any,
    ) -> Any:
        options = speech_options(
            speed=speed,
            stability=stability,
            similarity_boost=similarity_boost,
            style=style,
            speaker_boost=speaker_boost,
            volume=volume,
            emotion=emotion,
        )
        return command(*args, options=options, **kwargs)

    flags = [
        click.option(
            "--speed",
            type=float,
            default=None,
            help="Speaking rate, a multiple of normal (ElevenLabs 0.7-1.2, Cartesia 0.6-1.5, "
            "local 0.5-2.0).",
        ),
        click.option("--stability", type=float, default=None, help="ElevenLabs: 0-1."),
        click.option("--similarity-boost", type=float, default=None, help="ElevenLabs: 0-1."),
        click.option("--style", type=float, default=None, help="ElevenLabs: 0-1."),
        click.option(
            "--speaker-boost/--no-speaker-boost",
            default=None,
            help="ElevenLabs: use_speaker_boost.",
        ),
        click.option("--volume", type=float, default=None, help="Cartesia: 0.5-2.0."),
        click.option("--emotion", default=None, help='Cartesia: an emotion name, e.g. "calm".'),
    ]
    for flag in reversed(flags):
        with_options = flag(with_options)
    return with_options
