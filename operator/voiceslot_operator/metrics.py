"""Prometheus metrics of the operator (kopf itself exposes none).

Each operator instance owns its metrics on its own ``CollectorRegistry`` so that several
operators in one process (tests) never share counters; ``serve`` exposes one registry
over HTTP.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.reconciles = Counter(
            "voiceslot_operator_reconciles_total",
            "VoiceSlot refreshes, by outcome (ok, voice_not_found, unchanged: nothing to do)",
            ["outcome"],
            registry=r,
        )
        self.maintenance_runs = Counter(
            "voiceslot_operator_maintenance_runs_total",
            "RunMaintenance calls completed, by task",
            ["task"],
            registry=r,
        )
        self.maintenance_changes = Counter(
            "voiceslot_operator_maintenance_changes_total",
            "Voices changed by maintenance the operator drove, by task",
            ["task"],
            registry=r,
        )
        self.maintenance_last_success = Gauge(
            "voiceslot_operator_maintenance_last_success_timestamp_seconds",
            "When each maintenance task last completed",
            ["task"],
            registry=r,
        )
        self.errors = Counter(
            "voiceslot_operator_errors_total",
            "Failures the operator met, by where they happened",
            ["where"],
            registry=r,
        )
        self.reclaims = Counter(
            "voiceslot_operator_finalizer_reclaims_total",
            "Slots reclaimed because their VoiceSlot was deleted",
            registry=r,
        )
        self.pin_changes = Counter(
            "voiceslot_operator_pin_changes_total",
            "SetVoicePinned calls that changed a voice",
            registry=r,
        )
        self.drift_repairs = Counter(
            "voiceslot_operator_drift_repairs_total",
            "Voices re-queued after their remote copy vanished",
            registry=r,
        )
        self.mirrored = Counter(
            "voiceslot_operator_mirrored_total",
            "VoiceSlots the operator created or deleted to mirror the allocator's slots",
            ["action"],
            registry=r,
        )
        self.voice_sweeps = Counter(
            "voiceslot_operator_voice_sweeps_total",
            "Rounds of ListVoices (what VoiceSlot refreshes compare against) completed",
            registry=r,
        )
        self.slot_listings = Counter(
            "voiceslot_operator_slot_listings_total",
            "Rounds of ListSlots (lease holders for status, and mirroring) completed",
            registry=r,
        )
        self.allocator_up = Gauge(
            "voiceslot_operator_allocator_up",
            "1 when the operator's last call to the allocator was answered, else 0",
            registry=r,
        )
        self.refusals = Counter(
            "voiceslot_operator_ignored_voiceslots_total",
            "Refreshes of VoiceSlots the operator ignored, by why (refused, conflict)",
            ["reason"],
            registry=r,
        )
        self.deletions = Counter(
            "voiceslot_operator_deletions_total",
            "VoiceSlot deletions decided, by verdict (reclaim, wait_lease, give_up, ...)",
            ["verdict"],
            registry=r,
        )
        self.slots = Gauge(
            "voiceslot_operator_slots",
            "Slots the allocator listed at the last look, by provider",
            ["provider"],
            registry=r,
        )

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 when never set): for tests and debugging."""
        found = self.registry.get_sample_value(name, labels)
        return 0.0 if found is None else found

    def serve(self, port: int, *, addr: str = "0.0.0.0") -> Callable[[], None]:
        """Serve ``/metrics`` on ``port`` in a thread; returns the function that stops it."""
        server, thread = start_http_server(port, addr=addr, registry=self.registry)

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

        return stop
