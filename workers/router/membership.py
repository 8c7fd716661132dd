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

One put-back is not enough: the first poll after the wake-up often returns nothing,
and the next ones return what the fetcher had buffered before the freeze, for
partitions that are another router's by then, until the heartbeat learns that the
membership was lost (81 duplicate calls in one long run, seed 617570).
`AbsenceGuard` therefore holds every fetched record back from the absence until the
group has been rejoined (a new assignment) or, if no rebalance comes, for one session
timeout. A poll that took long because a rebalance was under way (aiokafka's
`getmany` waits for the new assignment) is not an absence: the router stayed a member.
"""

from __future__ import annotations

import enum


def fetched_after_absence(gap_s: float, session_timeout_ms: int) -> bool:
    """True when `gap_s` seconds passed between two polls, longer than the session
    timeout: the broker may already have given this router's partitions away."""
    return gap_s * 1000 > session_timeout_ms


REBALANCE_MARGIN_MS = 5_000
"""Time a member needs after its revocation callback (commit, JoinGroup) within the
rebalance timeout."""


def rebalance_timeout_ms(
    max_poll_interval_ms: int, session_timeout_ms: int, revoke_drain_timeout_s: float
) -> int:
    """The consumer's rebalance timeout: how long the broker waits for a member to rejoin.

    aiokafka defaults it to the session timeout, shorter than the revocation drain
    (`revoke_drain_timeout_s`, 10 s): a router still draining its revoked partitions
    (a slow or hung provider) was then dropped from the group, its partitions handed to
    another router that ran them again while the drained calls finished, and its commit
    refused (38 duplicate calls in one long chaos run). Like the Java client, at least
    the max poll interval, and always the drain plus a margin."""
    drain_ms = int(revoke_drain_timeout_s * 1000)
    return max(max_poll_interval_ms, session_timeout_ms, drain_ms + REBALANCE_MARGIN_MS)


class Poll(enum.Enum):
    RUN = "run"
    """A member as far as this router can tell: run what was fetched."""
    ABSENT = "absent"
    """An absence just found: abandon what is in flight, put the batch back."""
    UNCONFIRMED = "unconfirmed"
    """Since an absence, not yet rejoined: put the batch back."""


class AbsenceGuard:
    """Tells a router's poll loop whether its membership may have lapsed. Times are
    monotonic seconds; the caller passes `now` (testable without a clock)."""

    def __init__(self, session_timeout_ms: int, now_s: float) -> None:
        self.session_timeout_s = session_timeout_ms / 1000
        self._last_poll_s = now_s
        self._alive_s = now_s  # last sign of membership: a poll, a rebalance step
        self._rebalanced = False  # a rebalance began or ended, as a member, since the poll
        self._suspect_until_s: float | None = None

    @property
    def suspect(self) -> bool:
        return self._suspect_until_s is not None

    def _suspect_from(self, now_s: float) -> None:
        self._suspect_until_s = now_s + self.session_timeout_s

    def polled(self, now_s: float) -> tuple[Poll, float]:
        """A poll just returned at `now_s`: (what to do with its records, seconds since
        the previous poll returned)."""
        gap_s, self._last_poll_s = now_s - self._last_poll_s, now_s
        self._alive_s = now_s
        explained, self._rebalanced = self._rebalanced, False
        if not explained and fetched_after_absence(gap_s, int(self.session_timeout_s * 1000)):
            already = self.suspect
            self._suspect_from(now_s)
            return (Poll.UNCONFIRMED if already else Poll.ABSENT), gap_s
        if self._suspect_until_s is not None:
            if now_s < self._suspect_until_s:
                return Poll.UNCONFIRMED, gap_s
            self._suspect_until_s = None  # no rebalance came: the broker kept this member
        return Poll.RUN, gap_s

    def revoking(self, now_s: float) -> bool:
        """A rebalance begins (partitions revoked). True when it comes after an absence
        (no poll for longer than the session timeout): this member was dropped, what it
        has in flight belongs to others and must not be waited for, nor go on."""
        if fetched_after_absence(now_s - self._alive_s, int(self.session_timeout_s * 1000)):
            self._suspect_from(now_s)
            return True
        self._alive_s = now_s
        self._rebalanced = True  # a poll blocked by this rebalance is no absence
        return False

    def assigned(self, now_s: float) -> None:
        """The group was (re)joined: the assignment is this member's, fetches are valid."""
        self._suspect_until_s = None
        self._alive_s = now_s
        self._rebalanced = True
