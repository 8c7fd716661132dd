"""The chaos run's verdict: what was promised, what every sink shows, what went wrong. Pure.

Input is `Evidence`, everything collected after the run settled (evidence.py reads
it from the ingress, the topics, ClickHouse and the webhook receiver). `judge` returns
a `Verdict` whose `problems` name every violated invariant with examples:

1. Every request that got a 202 (or is a line of a batch that got a 2xx) reaches exactly
   one final state and one result: the poll answers succeeded/failed, the first result
   on tollway.results agrees with it, ClickHouse `requests` holds exactly one row and it
   is that first result's execution (first wins, docs/decisions/0003), a batch line has
   exactly one line in its batch's output or error file.
2. Sinks are idempotent: ClickHouse `count() = uniqExact(key)` for requests
   (request_id), attempts (attempt_id) and usage (usage_id); every attempt is stored.
3. Money: every provider call that consumed tokens has exactly one priced usage row,
   no usage row exists without its call, and the priced total equals the catalogue
   price of those calls; the budget processor's `team:default:24h` spend equals the
   unique priced usage (docs/decisions/0005).
4. Webhooks: every accepted async request and every batch that finished is delivered at
   least once, always under the id derived from the event (stable across re-sends),
   always with a valid signature.

Duplicate provider calls (a re-execution after a crash, real spend recorded as attempts)
are counted, not failed: at-least-once routing allows them (0003).

On attempts: `(request_id, attempt)` is NOT unique by design. `attempt` numbers the
calls of one execution (1, 2, ...), and a re-executed request starts again at 1 under a
new `attempt_id` (`<execution_id>.<n>`). The sink's identity is `attempt_id`; the gap
`count() - uniqExact(request_id, attempt)` is exactly the re-executions' calls, reported
as duplicates.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from schemas.records import Attempt, Result

FINAL = frozenset({"succeeded", "failed"})
WEBHOOK_MISMATCH = "webhook: status differs from the final state"
EXAMPLES = 5


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    batch_id: str
    custom_ids: tuple[str, ...]
    """As submitted, in line order (line n is custom_ids[n - 1])."""
    request_ids: tuple[str, ...]
    """The line requests' ids (`breq_...`), in line order."""
    status: str
    """The batch's status when the run ended."""
    file_custom_ids: tuple[str, ...]
    """Every custom_id found in its output and error files, repeats included."""


@dataclass(frozen=True, slots=True)
class WebhookSeen:
    subject_id: str
    webhook_id: str
    event_type: str
    status: str
    verified: bool


@dataclass(frozen=True, slots=True)
class TableCounts:
    rows: int
    unique_keys: int


@dataclass
class Evidence:
    accepted: Sequence[str]
    """Async request ids answered 202."""
    polled: Mapping[str, str]
    """Async request id -> status the ingress answered at the end."""
    results: Sequence[Result]
    """tollway.results since the run started, in offset order within each partition (all
    results of one request share its partition, so the first seen is the first written)."""
    run_attempts: Sequence[Attempt]
    """tollway.attempts since the run started."""
    all_attempt_ids: frozenset[str]
    """Every attempt id ever on tollway.attempts (usage rows must point at one)."""
    batches: Sequence[BatchOutcome]
    ch_requests: Mapping[str, Sequence[str]]
    """ClickHouse requests: request_id -> the execution_id of each of its rows."""
    ch_attempt_rows: Mapping[str, int]
    """ClickHouse attempts: attempt_id -> rows."""
    ch_usage_rows: Mapping[str, Sequence[tuple[str, int]]]
    """ClickHouse usage: usage_id -> (attempt_id, cost in nano-USD) of each of its rows."""
    ch_counts: Mapping[str, TableCounts]
    """`requests`, `attempts`, `usage`: rows and unique identities, counted in SQL."""
    ch_attempts_by_number: TableCounts
    """attempts: rows and uniqExact(request_id, attempt), to show re-executions."""
    webhooks: Sequence[WebhookSeen]
    webhook_id_of: Callable[[str], str]
    """The expected webhook id of an event key (workers/callbacks/events.message_id)."""
    price_nano_usd: Callable[[Attempt], int]
    """The catalogue price of one call (workers/cost/usage.price_attempt)."""
    budget_spent_nano_usd: int | None
    """team:default:24h as the budget processor last stated it; None if never seen."""
    budget_expected_nano_usd: int
    """Unique priced usage of team default in that window (from tollway.usage)."""
    usage_topic_duplicates: int = 0
    """Usage records on the topic repeating a usage id (re-priced after a cost kill)."""
    mock_answered: int | None = None
    """Calls the mock provider answered 200 during the run (its /stats)."""


@dataclass
class Verdict:
    requests_accepted: int = 0
    async_accepted: int = 0
    batch_lines_accepted: int = 0
    batches_accepted: int = 0
    succeeded: int = 0
    failed: int = 0
    losses: dict[str, list[str]] = field(default_factory=dict)
    double_billed: dict[str, list[str]] = field(default_factory=dict)
    inconsistent: dict[str, list[str]] = field(default_factory=dict)
    provider_calls: int = 0
    billed_calls: int = 0
    duplicate_results: int = 0
    duplicate_executions: int = 0
    duplicate_calls: int = 0
    duplicate_billed_calls: int = 0
    duplicate_calls_by_router: Counter[str] = field(default_factory=Counter)
    """Router id (`host-pid-suffix`) that made each duplicate call."""
    billed_nano_usd: int = 0
    expected_nano_usd: int = 0
    budget_spent_nano_usd: int | None = None
    budget_expected_nano_usd: int = 0
    webhook_deliveries: int = 0
    webhook_redeliveries: int = 0
    usage_topic_duplicates: int = 0
    unrecorded_provider_answers: int | None = None
    ch_counts: dict[str, TableCounts] = field(default_factory=dict)
    ch_attempts_by_number: TableCounts | None = None

    @property
    def lost(self) -> int:
        return sum(len(v) for v in self.losses.values())

    @property
    def double_billed_count(self) -> int:
        return sum(len(v) for v in self.double_billed.values())

    @property
    def duplicate_rate(self) -> float:
        return self.duplicate_calls / self.provider_calls if self.provider_calls else 0.0

    def problems(self) -> list[str]:
        out = []
        for title, found in (
            ("LOST", self.losses),
            ("DOUBLE-BILLED", self.double_billed),
            ("INCONSISTENT", self.inconsistent),
        ):
            for what, ids in found.items():
                if ids:
                    out.append(f"{title} {what}: {len(ids)}, e.g. {ids[:EXAMPLES]}")
        for table, counts in self.ch_counts.items():
            if counts.rows != counts.unique_keys:
                out.append(
                    f"ClickHouse {table}: count() {counts.rows} != uniqExact {counts.unique_keys}"
                )
        if self.billed_nano_usd != self.expected_nano_usd:
            out.append(
                f"priced usage {self.billed_nano_usd} nano-USD != catalogue price of the calls "
                f"that consumed tokens {self.expected_nano_usd} nano-USD"
            )
        if self.budget_spent_nano_usd != self.budget_expected_nano_usd:
            out.append(
                f"budget team:default:24h states {self.budget_spent_nano_usd} nano-USD, the "
                f"unique priced usage is {self.budget_expected_nano_usd} nano-USD"
            )
        return out


def _add(bucket: dict[str, list[str]], what: str, ids: Sequence[str]) -> None:
    bucket[what] = sorted(ids)


def first_results(results: Sequence[Result]) -> tuple[dict[str, Result], Counter[str]]:
    """The first result per request id and how many each request has."""
    first: dict[str, Result] = {}
    counts: Counter[str] = Counter()
    for result in results:
        counts[result["request_id"]] += 1
        first.setdefault(result["request_id"], result)
    return first, counts


def execution_of(attempt: Attempt) -> str:
    """An attempt id is `<execution_id>.<n>` (workers/router/execution.py)."""
    return attempt["attempt_id"].rsplit(".", 1)[0]


def consumed_tokens(attempt: Attempt) -> bool:
    return attempt["prompt_tokens"] > 0 or attempt["completion_tokens"] > 0


def judge(ev: Evidence) -> Verdict:
    v = Verdict(ch_counts=dict(ev.ch_counts), ch_attempts_by_number=ev.ch_attempts_by_number)
    first, result_counts = first_results(ev.results)
    v.duplicate_results = sum(n - 1 for n in result_counts.values())
    _judge_requests(ev, v, first)
    _judge_batches(ev, v, first)
    _judge_money(ev, v, first)
    _judge_webhooks(ev, v)
    return v


def _judge_requests(ev: Evidence, v: Verdict, first: Mapping[str, Result]) -> None:
    accepted = list(dict.fromkeys(ev.accepted))
    v.async_accepted = len(accepted)
    _add(v.losses, "async: no final state when polled",
         [i for i in accepted if ev.polled.get(i) not in FINAL])  # fmt: skip
    _add(v.losses, "async: no result on tollway.results", [i for i in accepted if i not in first])
    _add(v.inconsistent, "async: poll disagrees with the first result",
         [i for i in accepted if i in first and ev.polled.get(i) in FINAL
          and ev.polled[i] != first[i]["status"]])  # fmt: skip
    for i in accepted:
        status = ev.polled.get(i)
        if status == "succeeded":
            v.succeeded += 1
        elif status == "failed":
            v.failed += 1
    _judge_rows(ev, v, first, accepted, "async")


def _judge_rows(
    ev: Evidence, v: Verdict, first: Mapping[str, Result], ids: Sequence[str], kind: str
) -> None:
    """One ClickHouse `requests` row per accepted request, and it is the first result."""
    _add(v.losses, f"{kind}: no row in ClickHouse requests",
         [i for i in ids if i not in ev.ch_requests])  # fmt: skip
    _add(v.double_billed, f"{kind}: several rows in ClickHouse requests",
         [i for i in ids if len(ev.ch_requests.get(i, ())) > 1])  # fmt: skip
    _add(v.inconsistent, f"{kind}: ClickHouse row is not the first result (first wins)",
         [i for i in ids if i in first and len(ev.ch_requests.get(i, ())) == 1
          and ev.ch_requests[i][0] != first[i]["execution_id"]])  # fmt: skip


def _judge_batches(ev: Evidence, v: Verdict, first: Mapping[str, Result]) -> None:
    v.batches_accepted = len(ev.batches)
    unfinished: list[str] = []
    missing: list[str] = []
    repeated: list[str] = []
    line_ids: list[str] = []
    for batch in ev.batches:
        v.batch_lines_accepted += len(batch.custom_ids)
        line_ids.extend(batch.request_ids)
        if batch.status != "completed":
            unfinished.append(f"{batch.batch_id} ({batch.status})")
        seen = Counter(batch.file_custom_ids)
        missing += [f"{batch.batch_id}/{c}" for c in batch.custom_ids if seen[c] == 0]
        repeated += [f"{batch.batch_id}/{c}" for c in batch.custom_ids if seen[c] > 1]
    _add(v.losses, "batch: not completed", unfinished)
    _add(v.losses, "batch line: not in the output or error file", missing)
    _add(v.double_billed, "batch line: more than once in the output/error files", repeated)
    _add(v.losses, "batch line: no result on tollway.results",
         [i for i in line_ids if i not in first])  # fmt: skip
    _judge_rows(ev, v, first, line_ids, "batch line")
    v.requests_accepted = v.async_accepted + v.batch_lines_accepted


def _judge_money(ev: Evidence, v: Verdict, first: Mapping[str, Result]) -> None:
    calls: dict[str, Attempt] = {}
    for attempt in ev.run_attempts:
        calls.setdefault(attempt["attempt_id"], attempt)
    v.provider_calls = len(calls)
    billed = {a_id: a for a_id, a in calls.items() if consumed_tokens(a)}
    v.billed_calls = len(billed)
    executions: defaultdict[str, set[str]] = defaultdict(set)
    for attempt in calls.values():
        executions[attempt["request_id"]].add(execution_of(attempt))
        winner = first.get(attempt["request_id"])
        if winner is not None and execution_of(attempt) != winner["execution_id"]:
            v.duplicate_calls += 1
            v.duplicate_calls_by_router[attempt["router_id"]] += 1
            v.duplicate_billed_calls += consumed_tokens(attempt)
    v.duplicate_executions = sum(len(e) - 1 for e in executions.values())

    _add(v.losses, "attempt: not in ClickHouse attempts",
         [a for a in calls if ev.ch_attempt_rows.get(a, 0) == 0])  # fmt: skip
    usage_by_attempt: defaultdict[str, list[int]] = defaultdict(list)
    for rows in ev.ch_usage_rows.values():
        for attempt_id, cost in rows:
            usage_by_attempt[attempt_id].append(cost)
    _add(v.losses, "call that consumed tokens: no priced usage in ClickHouse",
         [a for a in billed if a not in usage_by_attempt])  # fmt: skip
    _add(v.double_billed, "call: more than one usage row in ClickHouse",
         [a for a in billed if len(usage_by_attempt.get(a, ())) > 1])  # fmt: skip
    _add(v.double_billed, "usage row without a provider call (no such attempt)",
         [a for a in usage_by_attempt if a not in ev.all_attempt_ids])  # fmt: skip
    v.expected_nano_usd = sum(ev.price_nano_usd(a) for a in billed.values())
    v.billed_nano_usd = sum(sum(usage_by_attempt.get(a, ())) for a in billed)
    v.budget_spent_nano_usd = ev.budget_spent_nano_usd
    v.budget_expected_nano_usd = ev.budget_expected_nano_usd
    v.usage_topic_duplicates = ev.usage_topic_duplicates
    if ev.mock_answered is not None:
        answered_ok = sum(1 for a in calls.values() if a["outcome"] == "ok")
        v.unrecorded_provider_answers = ev.mock_answered - answered_ok


def _judge_webhooks(ev: Evidence, v: Verdict) -> None:
    by_subject: defaultdict[str, list[WebhookSeen]] = defaultdict(list)
    for seen in ev.webhooks:
        by_subject[seen.subject_id].append(seen)
    v.webhook_deliveries = len(ev.webhooks)
    v.webhook_redeliveries = sum(len(d) - 1 for d in by_subject.values() if d)
    expected = {i: ev.webhook_id_of(f"request:{i}") for i in dict.fromkeys(ev.accepted)}
    for batch in ev.batches:
        if batch.status in {"completed", "failed", "expired", "cancelled"}:
            expected[batch.batch_id] = ev.webhook_id_of(f"batch:{batch.batch_id}:{batch.status}")
    _add(v.losses, "webhook: never delivered", [s for s in expected if not by_subject.get(s)])
    _add(v.inconsistent, "webhook: id not the event's stable id",
         [s for s, want in expected.items()
          if any(d.webhook_id != want for d in by_subject.get(s, ()))])  # fmt: skip
    _add(v.inconsistent, "webhook: signature did not verify",
         sorted({d.subject_id for d in ev.webhooks if not d.verified}))  # fmt: skip
    _add(v.inconsistent, WEBHOOK_MISMATCH,
         [i for i in dict.fromkeys(ev.accepted) if ev.polled.get(i) in FINAL
          and any(d.status != ev.polled[i] for d in by_subject.get(i, ()))])  # fmt: skip
