"""Readiness from probe results, the way the kubelet judges it (pure): not ready until
`successThreshold` successes in a row, then ready until `failureThreshold` failures
in a row. The probe itself is declared in the pod record (model/probe.py)."""

from __future__ import annotations

from podnet.model.probe import ReadinessProbe


class ProbeState:
    """Readiness from a stream of probe results, with the kubelet's thresholds."""

    def __init__(self, probe: ReadinessProbe) -> None:
        self.probe = probe
        self.ready = False
        self._streak = 0  # results in a row that disagree with `ready`
        self.last_error = "not probed yet"

    def record(self, ok: bool, error: str = "") -> bool:
        """Add one result; True when readiness flipped."""
        self.last_error = "" if ok else (error or "probe failed")
        if ok == self.ready:
            self._streak = 0
            return False
        self._streak += 1
        needed = self.probe.success_threshold if ok else self.probe.failure_threshold
        if self._streak < needed:
            return False
        self.ready, self._streak = ok, 0
        return True
