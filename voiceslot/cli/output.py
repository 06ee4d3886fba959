"""What every CLI command shares: the command context (settings, target, credential,
``--json``), the consoles, and the helpers that print for people or for scripts."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click
from google.protobuf.json_format import MessageToDict
from rich.console import Console

from voiceslot.cli.client import Connection, connection_for
from voiceslot.config import Settings
from voiceslot.v1 import common_pb2

console = Console(stderr=False)
err_console = Console(stderr=True)
ENCODINGS_PB = {
    "wav": common_pb2.AUDIO_ENCODING_WAV,
    "pcm16": common_pb2.AUDIO_ENCODING_PCM16,
    "mp3": common_pb2.AUDIO_ENCODING_MP3,
    "opus": common_pb2.AUDIO_ENCODING_OPUS,
    "mulaw": common_pb2.AUDIO_ENCODING_MULAW,
    "alaw": common_pb2.AUDIO_ENCODING_ALAW,
}
"""``--format`` names and their wire values."""


def audio_format_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--format`` and ``--rate``, as every command that makes audio takes them."""
    command = click.option("--rate", default=0, help="Sample rate in Hz (0: the engine's own).")(
        command
    )
    return click.option(
        "--format",
        "encoding",
        type=click.Choice(sorted(ENCODINGS_PB)),
        default="wav",
        show_default=True,
    )(command)


def audio_format(encoding: str, rate: int) -> common_pb2.AudioFormat:
    return common_pb2.AudioFormat(encoding=ENCODINGS_PB[encoding], sample_rate_hz=rate)


def state_name(value: int) -> str:
    return common_pb2.VoiceState.Name(value).removeprefix("VOICE_STATE_").lower()


def to_dict(message: Any) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


class Ctx:
    def __init__(
        self, settings: Settings, target: str | None, api_key: str | None, as_json: bool
    ) -> None:
        self.settings = settings
        self.target = target
        self.api_key = api_key
        self.json = as_json

    def connection(self) -> Connection:
        return connection_for(self.settings, target=self.target, api_key=self.api_key)
