"""Sync and streamed requests answered 200 are accounted like accepted ones. Pure.

The chaos invariants (tests/chaos/invariants.py) judge async requests and batch lines;
a request answered directly (sync, or streamed to the end) carries its id in
`x-tollway-request-id`, and must likewise have a result on tollway.results and exactly
one row in ClickHouse `requests` (its calls' money is already judged with every other
call's by the chaos invariants).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence


def served_problems(
    served: Sequence[str],
    result_ids: Collection[str],
    ch_requests: Mapping[str, Sequence[str]],
) -> dict[str, list[str]]:
    """What -> the ids that show it: missing results or rows (losses), repeated rows."""
    ids = list(dict.fromkeys(served))
    found = {
        "LOST served: no result on tollway.results": [i for i in ids if i not in result_ids],
        "LOST served: no row in ClickHouse requests": [i for i in ids if i not in ch_requests],
        "DOUBLE-BILLED served: several rows in ClickHouse requests": [
            i for i in ids if len(ch_requests.get(i, ())) > 1
        ],
    }
    return {what: found_ids for what, found_ids in found.items() if found_ids}
