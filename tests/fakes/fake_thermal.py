"""A fake ThermalStatePublisher whose readings the test sets."""

from __future__ import annotations

from dataclasses import dataclass, field

from trt_provision.types import ThermalState


@dataclass
class FakeThermal:
    state: ThermalState = field(default_factory=ThermalState)
    reads: int = 0

    def thermal_state(self) -> ThermalState:
        self.reads += 1
        return self.state
