"""What a server takes in one transaction, as learnt from its refusals (``TransactionLimit``): push learns it,
the sync store keeps it per server, and each sync that writes probes twice that. Here, apart from both, so
that the store does not depend on push."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TransactionLimit:
    """What a server takes in one transaction, as learnt from its refusals: parts are cut to ``max_entries``;
    one patient's part of ``refused_at`` entries or more goes as a batch without trying (it would be refused)."""

    max_entries: int
    refused_at: int

    def refused(self, entries: int) -> TransactionLimit:
        """After a transaction of ``entries`` was refused for its size: its halves are what to try next."""
        return TransactionLimit(min(self.max_entries, max(1, entries // 2)), min(self.refused_at, entries))

    def probe(self, ceiling: int) -> TransactionLimit | None:
        """What the next run tries: twice the parts and twice the patient that were learnt, up to ``ceiling``
        (``--chunk``); None once that cuts nothing any more (the server takes what the run is configured for).

        Learnt from refusals, a limit can be a passing state of the server (an overloaded proxy answering 413 to
        everything leaves 1 entry). Doubling once per run finds a server that recovered within a few runs that
        write (1 entry to 100 in 7), and costs a server still limited only the parts it refuses once per run
        (at most ``--concurrency``), which the run then halves as before."""
        max_entries, refused_at = min(ceiling, self.max_entries * 2), self.refused_at * 2
        if max_entries >= ceiling and refused_at > ceiling:
            return None
        return TransactionLimit(max_entries, refused_at)
