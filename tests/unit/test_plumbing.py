"""Unit tests for the shared plumbing: auth, credentials, page tokens, status mapping,
settings validation and JSON logs."""

from __future__ import annotations

import contextvars
import json
import logging
import stat
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from pydantic import ValidationError

from voiceslot import errors
from voiceslot.auth import KeyTable, Principal
from voiceslot.config import ProviderConfig, Settings
from voiceslot.credentials import ensure_local_admin_key, key_table, read_local_key
from voiceslot.logs import bind_call, configure_logging, get_logger
from voiceslot.pagination import decode_token, encode_token, page_size
from voiceslot.providers.errors import RateLimited
from voiceslot.rpc.interceptors import credential_from, request_id_from
from voiceslot.rpc.status import details_for, grpc_code, to_rpc_status


def test_key_table_resolves_only_known_keys():
    table = KeyTable([("k-admin", Principal("ops", "admin")), ("k-user", Principal("ann", "user"))])
    assert table.resolve("k-admin") == Principal("ops", "admin")
    assert table.resolve("k-user").owner_filter() == "ann"
    assert table.resolve("k-admin").owner_filter() is None
    assert table.resolve("k-user ") is None and table.resolve("") is None


def test_credentials_from_metadata():
    assert credential_from([("authorization", "Bearer abc")]) == "abc"
    assert credential_from([("authorization", "bearer  abc ")]) == "abc"
    assert credential_from([("x-api-key", "xyz")]) == "xyz"
    assert credential_from([("authorization", "Basic abc")]) is None
    assert credential_from([]) is None
    assert request_id_from([("x-request-id", "r-1")]) == ("r-1", True)
    replaced, sent = request_id_from([("x-request-id", "bad\nid")])
    assert len(replaced) == 32 and sent  # replaced, not echoed
    made, sent = request_id_from([("authorization", "Bearer k")])
    assert len(made) == 32 and not sent


def test_local_admin_key_is_created_once_and_private(tmp_path: Path):
    key = ensure_local_admin_key(tmp_path)
    assert ensure_local_admin_key(tmp_path) == key == read_local_key(tmp_path)
    mode = stat.S_IMODE((tmp_path / "credentials.json").stat().st_mode)
    assert mode == 0o600
    table = key_table(Settings(data_dir=tmp_path), internal_key="internal")
    assert table.resolve(key) == Principal("local-admin", "admin")
    assert table.resolve("internal").is_admin


def test_page_tokens_round_trip_and_reject_garbage():
    token = encode_token("2026-01-01T00:00:00+00:00", "v_1")
    assert decode_token(token, arity=2) == ["2026-01-01T00:00:00+00:00", "v_1"]
    assert decode_token("", arity=2) is None
    for bad in ["%%%", encode_token(1), "bm90IGpzb24="]:
        with pytest.raises(errors.InvalidArgument) as info:
            decode_token(bad, arity=2)
        assert info.value.field == "page_token"
    assert page_size(0) == 50 and page_size(7) == 7
    with pytest.raises(errors.InvalidArgument):
        page_size(501)


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.InvalidArgument("text", "empty"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFound("voice", "v_1"), grpc.StatusCode.NOT_FOUND),
        (errors.PayloadTooLarge("sample", 10), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.QuotaExceeded("busy", retry_after=2.5), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.FailedPrecondition("leased"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.Unauthenticated("who"), grpc.StatusCode.UNAUTHENTICATED),
        (errors.PermissionDenied("no"), grpc.StatusCode.PERMISSION_DENIED),
        (errors.Unavailable("down"), grpc.StatusCode.UNAVAILABLE),
        (RateLimited("429", retry_after=3), grpc.StatusCode.UNAVAILABLE),
        (KeyError("bug"), grpc.StatusCode.INTERNAL),
    ],
)
def test_one_mapping_from_errors_to_codes(exc, code):
    assert grpc_code(exc) == code


def test_status_details():
    bad = details_for(errors.InvalidArgument("items[2].name", "unsafe"))
    request = error_details_pb2.BadRequest()
    assert bad[0].Unpack(request) and request.field_violations[0].field == "items[2].name"

    quota = details_for(
        errors.QuotaExceeded(
            "too many",
            violations=(errors.QuotaViolation("user:ann", "100 queued"),),
            retry_after=1.5,
        )
    )
    failure, retry = error_details_pb2.QuotaFailure(), error_details_pb2.RetryInfo()
    assert quota[0].Unpack(failure) and failure.violations[0].subject == "user:ann"
    assert quota[1].Unpack(retry) and retry.retry_delay.ToNanoseconds() == 1_500_000_000

    internal = to_rpc_status(KeyError("secret detail"))
    assert internal.code == grpc.StatusCode.INTERNAL and "secret" not in internal.details


def test_settings_reject_bad_configuration(tmp_path: Path):
    with pytest.raises(ValidationError, match="needs an api_key"):
        ProviderConfig(name="eleven", kind="elevenlabs")
    with pytest.raises(ValidationError):
        ProviderConfig(name="Bad Name", kind="local")
    with pytest.raises(ValidationError, match="unique"):
        Settings(
            data_dir=tmp_path,
            providers=(ProviderConfig(name="a", kind="local"),) * 2,
            default_provider="a",
        )
    with pytest.raises(ValidationError, match="default_provider"):
        Settings(data_dir=tmp_path, default_provider="nowhere")


def test_settings_read_environment_and_yaml(tmp_path: Path, monkeypatch):
    config = tmp_path / "c.yaml"
    config.write_text("listen: 127.0.0.1:7000\nallocator:\n  max_attempts: 9\n")
    monkeypatch.setenv("VOICESLOT_CONFIG", str(config))
    monkeypatch.setenv("VOICESLOT_ALLOCATOR__MAX_ATTEMPTS", "3")
    settings = Settings(data_dir=tmp_path)
    assert settings.listen == "127.0.0.1:7000"  # from the file
    assert settings.allocator.max_attempts == 3  # the environment wins over the file
    assert settings.allocator_database_url.endswith("allocator.sqlite3")


def test_json_logs_carry_the_bound_context(capsys):
    configure_logging(level="INFO", fmt="json")
    try:

        def one_call(voice: str | None) -> None:  # as each RPC runs in its own task
            bind_call("r-9", user="ann", voice=voice)
            get_logger("t").info("hello", extra_field=3)
            get_logger("t").info("own user", user="bob")

        contextvars.copy_context().run(one_call, "v_1")
        contextvars.copy_context().run(one_call, None)
        get_logger("t").info("after the call")
        *_, line, own, voiceless, _, after_line = capsys.readouterr().err.strip().splitlines()
        record = json.loads(line)
        assert record["event"] == "hello" and record["level"] == "info"
        assert (record["request_id"], record["user"], record["voice"]) == ("r-9", "ann", "v_1")
        assert record["extra_field"] == 3
        assert json.loads(own)["user"] == "bob"  # a line's own field wins
        assert "voice" not in json.loads(voiceless)
        after = json.loads(after_line)
        assert "request_id" not in after and "user" not in after
    finally:
        logging.getLogger().handlers.clear()
