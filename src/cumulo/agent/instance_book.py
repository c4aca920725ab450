"""The instance list this host is assigned, kept whole from the API's deltas.

Each long-poll answer names the list it stands for (`view`); the host claims it back (`have`)
and the next answer carries only the instances added or changed since, and the ids removed
(see cumulo.services.agents). A busy host thus receives one instance per create on it, not
its whole list, and nothing at all on a DNS-only wake-up. The book merges and hands the
reconciler complete lists, so nothing downstream knows about deltas.
"""

from __future__ import annotations

import structlog

from cumulo.protocol import Assignment, Assignments

log = structlog.get_logger("cumulo.agent")


class InstanceBook:
    def __init__(self) -> None:
        self._view = ""  # the list held, as the API named it ("" = none to claim)
        self._held: dict[str, Assignment] = {}

    def claim(self) -> str | None:
        """The `have` parameter of the next assignments call."""
        return self._view or None

    def forget(self) -> None:
        self._view, self._held = "", {}

    def apply(self, batch: Assignments) -> Assignments | None:
        """The batch with the complete instance list; None when it is a delta from another
        list than the one held (the caller then asks again, claiming nothing)."""
        if batch.instances_since is None:
            self._held = {a.id: a for a in batch.instances}
        elif not self._view or batch.instances_since != self._view:
            # Cannot happen with one poll in flight; a partial list must never reach the
            # reconciler (it would stop the VMs missing from it).
            log.warning("instances_delta_mismatch", held=self._view,
                        since=batch.instances_since)
            self.forget()
            return None
        else:
            for gone in batch.instances_removed:
                self._held.pop(gone, None)
            for a in batch.instances:
                self._held[a.id] = a
        self._view = batch.view
        return batch.model_copy(update={"instances": list(self._held.values()),
                                        "instances_since": None, "instances_removed": []})
