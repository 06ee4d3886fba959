"""Per-request speech options against what each engine has: one rule, one error shape.

``SpeechOptions`` is flat (speed, ElevenLabs' voice settings, Cartesia's controls); each
adapter declares which of them its engine has and their ranges (``OptionRules``) and
answers ``check_options`` with ``check_against``. An option the engine does not have, a
value out of its range, or a number that is not finite is ``InvalidArgument`` naming the
option by its request path (``options.elevenlabs.stability``), so the caller learns what
to change; nothing is ever dropped silently. Pure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from voiceslot.errors import InvalidArgument, shown
from voiceslot.providers.base import SpeechOptions

FIELD_PATHS: Mapping[str, str] = {
    "speed": "options.speed",
    "stability": "options.elevenlabs.stability",
    "similarity_boost": "options.elevenlabs.similarity_boost",
    "style": "options.elevenlabs.style",
    "use_speaker_boost": "options.elevenlabs.use_speaker_boost",
    "volume": "options.cartesia.volume",
    "emotion": "options.cartesia.emotion",
}
"""Each option's path in a request (the gRPC ``SpeechOptions`` message's field names)."""

ALWAYS_ACCEPTED = frozenset({"word_timings"})
"""Asked of every engine; one without alignment answers without timings (documented)."""

NUMERIC = ("speed", "stability", "similarity_boost", "style", "volume")


@dataclass(frozen=True)
class OptionRules:
    """What one engine accepts."""

    engine: str
    """Named in errors, e.g. "ElevenLabs"."""
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    """Numeric options the engine has, each with its inclusive range."""
    flags: frozenset[str] = frozenset()
    """Boolean options the engine has."""
    choices: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Text options the engine has, each with its allowed values."""

    def has(self, name: str) -> bool:
        return name in self.ranges or name in self.flags or name in self.choices


def set_options(options: SpeechOptions) -> list[str]:
    """The names of the options a request sets (``None`` is unset)."""
    return [
        f.name
        for f in fields(options)
        if f.name not in ALWAYS_ACCEPTED and getattr(options, f.name) is not None
    ]


def check_finite(options: SpeechOptions) -> None:
    """Every number set is finite: NaN and infinities are refused whatever the engine,
    before a lease is taken for the call."""
    for name in NUMERIC:
        value = getattr(options, name)
        if value is not None and not math.isfinite(value):
            raise InvalidArgument(FIELD_PATHS[name], f"must be a finite number, not {value}")


def check_against(options: SpeechOptions, rules: OptionRules) -> None:
    """Refuse an option the engine does not have or a value it does not take."""
    check_finite(options)
    for name in set_options(options):
        path = FIELD_PATHS[name]
        if not rules.has(name):
            raise InvalidArgument(path, f"is not supported by {rules.engine} voices")
        value = getattr(options, name)
        if name in rules.ranges:
            low, high = rules.ranges[name]
            if not low <= value <= high:
                raise InvalidArgument(
                    path, f"must be {low:g}..{high:g} for {rules.engine} voices, not {value:g}"
                )
        elif name in rules.choices and value not in rules.choices[name]:
            raise InvalidArgument(
                path,
                f"{shown(value)} is not one of {rules.engine}'s values "
                f"({', '.join(sorted(rules.choices[name]))})",
            )
