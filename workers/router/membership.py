"""Whether records a router just fetched may still be its to run. Pure.

A router that stops polling for longer than its session timeout (frozen by SIGSTOP,
a stalled host, an event loop blocked by a long GC) has been dropped from the group
by the broker, and its partitions handed to another router, before it learns so:
aiokafka returns the records it had already fetched the moment the process resumes,
and running them duplicates provider calls the new owner also makes (real spend;
the chaos suite counted 448 of 454 duplicates in one long run at two such wake-ups,
docs/reliability.md). Such a batch is put back (seek to its first offset) instead of
run; the next poll rejoins the group, and whichever router then owns the partition
fetches the records again.
"""

from __future__ import annotations


def fetched_after_absence(gap_s: float, session_timeout_ms: int) -> bool:
    """True when `gap_s` seconds passed between two polls, longer than the session
    timeout: the broker may already have given this router's partitions away."""
    return gap_s * 1000 > session_timeout_ms
