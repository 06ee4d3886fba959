"""``voiceslot providers`` and ``voiceslot slots`` against a real server process: the
numbers an operator looks at, as tables and as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import grpc

from tests.acceptance.conftest import ServerProcess
from tests.conftest import ADMIN_KEY, ALICE_KEY, auth
from voiceslot.v1 import allocator_pb2 as apb
from voiceslot.v1 import allocator_pb2_grpc


def test_providers_and_slots_show_who_holds_what(
    server_process: ServerProcess, sample_wav: bytes, tmp_path: Path
):
    voice_id = server_process.add_voice(sample_wav, tmp_path, key=ALICE_KEY)

    with grpc.insecure_channel(server_process.target) as channel:
        stub = allocator_pb2_grpc.AllocatorServiceStub(channel)
        held = stub.EnsureActiveVoice(
            apb.EnsureActiveVoiceRequest(voice_id=voice_id, lease_holder="podcast-render"),
            metadata=auth(ALICE_KEY),
        )
        assert held.HasField("ready")

        providers = server_process.cli("--json", "providers", key=ADMIN_KEY)
        assert providers.returncode == 0, providers.stderr
        assert json.loads(providers.stdout) == [
            {
                "name": "local",
                "kind": "local",
                "capacity": 4,
                "used": 1,
                "queued": 0,
                "oldest_wait_s": 0.0,
                "breaker": "closed",
                "add_edit_remaining": None,
            }
        ]
        table = server_process.cli("providers", key=ADMIN_KEY)
        assert table.returncode == 0, table.stderr
        assert "1/4" in table.stdout and "closed" in table.stdout and "unknown" in table.stdout

        slots = server_process.cli("--json", "slots", key=ADMIN_KEY)
        assert slots.returncode == 0, slots.stderr
        [slot] = json.loads(slots.stdout)
        assert slot["voice_id"] == voice_id and slot["owner"] == "alice"
        assert slot["state"] == "ready" and slot["active_leases"] == 1
        assert slot["lease_holder"] == "podcast-render"
        assert slot["idle_s"] is None  # in use, not idle

        stub.ReleaseLease(
            apb.ReleaseLeaseRequest(lease_id=held.ready.lease.lease_id), metadata=auth(ALICE_KEY)
        )

    [idle] = json.loads(server_process.cli("--json", "slots", key=ADMIN_KEY).stdout)
    assert idle["active_leases"] == 0 and idle["lease_holder"] is None
    assert idle["idle_s"] is not None and idle["idle_s"] >= 0
    table = server_process.cli("slots", "--provider", "local", key=ADMIN_KEY)
    assert table.returncode == 0, table.stderr
    assert voice_id in table.stdout and "ready" in table.stdout

    refused = server_process.cli("slots", key=ALICE_KEY)
    assert refused.returncode == 1 and "PERMISSION_DENIED" in refused.stderr
