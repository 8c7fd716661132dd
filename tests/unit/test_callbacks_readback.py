"""The callback dispatcher holds a result until its partition's earlier results are known.

At a takeover the dispatcher reads back the request ids of a results partition's recent
results (tests/integration/test_callbacks_second_result.py runs it on a broker); here,
without a broker, the hold itself (`KnownResults`): released when the partition is known
up to the result, at a rebalance, or after its timeout.
"""

from __future__ import annotations

import asyncio

from workers.callbacks.dispatcher import KnownResults


async def test_a_result_waits_until_the_results_before_it_are_known() -> None:
    known = KnownResults(timeout_s=5.0)
    waiting = asyncio.create_task(known.wait(3, 120))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    known.advance(3, 100)  # read back up to the start position, not yet up to this result
    await asyncio.sleep(0.01)
    assert not waiting.done()
    known.advance(3, 120)
    await asyncio.wait_for(waiting, 1)
    assert known.below(3, 120)
    assert not known.below(3, 121)
    known.advance(3, 110)  # never goes back
    assert known.up_to(3) == 120
    assert known.up_to(4) == -1


async def test_a_rebalance_releases_what_waits() -> None:
    known = KnownResults(timeout_s=5.0)
    waiting = asyncio.create_task(known.wait(0, 7))
    await asyncio.sleep(0.01)
    known.release()
    await asyncio.wait_for(waiting, 1)
    assert not known.below(0, 7)


async def test_the_wait_is_bounded() -> None:
    known = KnownResults(timeout_s=0.05)
    await asyncio.wait_for(known.wait(1, 1), 1)
    assert not known.below(1, 1)
