"""Reconciliation records ElevenLabs' remaining monthly add/edit budget on the provider
row, where the reclaim policy reads it (and ListProviders shows it)."""

from __future__ import annotations

import grpc

from tests.conftest import ADMIN_KEY, auth
from tests.support import ensure_ready, register
from voiceslot.cli.runtime import Runtime
from voiceslot.testing.emulator import ProviderEmulator
from voiceslot.v1 import allocator_pb2 as apb
from voiceslot.v1 import allocator_pb2_grpc


async def test_reconcile_records_the_remaining_clone_budget(make_settings, sample_wav):
    with ProviderEmulator() as emu:
        emu.state.configure_account("elevenlabs", "el-emulator-key", max_voice_add_edits=10)
        settings = make_settings(
            providers=(emu.provider_config("elevenlabs", name="eleven", capacity=3),),
            default_provider="eleven",
        )
        runtime = await Runtime(settings).start(only=("allocator",))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}") as channel:
                stub = allocator_pb2_grpc.AllocatorServiceStub(channel)
                md = auth(ADMIN_KEY)
                before = (
                    await stub.ListProviders(apb.ListProvidersRequest(), metadata=md)
                ).providers[0]
                assert before.add_edit_remaining == -1  # unknown until reconciled
                voice = await register(channel, md, sample_wav)
                await ensure_ready(channel, md, voice.voice_id)  # one clone: one add/edit spent
                await stub.RunMaintenance(
                    apb.RunMaintenanceRequest(tasks=[apb.MAINTENANCE_TASK_RECONCILE]), metadata=md
                )
                after = (
                    await stub.ListProviders(apb.ListProvidersRequest(), metadata=md)
                ).providers[0]
                assert after.add_edit_remaining == 9
        finally:
            await runtime.stop()
