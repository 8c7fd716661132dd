"""Batch worker wiring: batch state + results -> requests, spool, output and error files.

    in:  tollway.batch-state   (group `tollway-batches`: a worker owns the batches of its
                                partitions; each assigned partition is re-read from the
                                start, like a changelog, to rebuild their state)
    in:  tollway.results       (every partition, no group; records keyed `breq_<batch>_<line>`
                                of owned batches only, from each batch's checkpointed offsets)
    out: tollway.requests.batch (expanded lines, mode "batch")
    out: tollway.batch-state    (checkpoints: status, counts, done bitmap, spool segments,
                                results offsets)
    in:  tollway.budget-state  (only with budgets: every partition, no group; a team with
                                a hard budget has its expansion paced and paused,
                                workers/batches/budget.py)
    files: input (read), spool segments, output and error files (file store)

Guarantee: every line ends in exactly one output or error line. A checkpoint is
written only after the spool segment it names is in the store ("offsets after the
side effect": a batch's results offsets live in its checkpoint), so a worker killed
at any moment restarts from the last checkpoint, re-reads the results after it,
and the done bitmap drops what was already spooled. Expansion resumes from the
last checkpointed line; re-published lines keep their request ids.

Per batch: validating -> in_progress (results offsets fixed, then expansion) ->
all lines done -> finalizing -> completed; cancel and the completion window are
checked on every tick (docs/decisions/0006-batches.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from schemas import codec, topics
from schemas.batch_topics import BATCH_STATE
from schemas.errors import CorruptRecord, TollwayError
from schemas.records import META_CUSTOM_ID, BatchState, BatchStatus
from schemas.routes import RoutesConfig, load_routes
from schemas.settings import KafkaSettings
from workers.batches import files as batch_files
from workers.batches.assembler import (
    Assembly,
    build_files,
    next_segment_key,
    parse_request_id,
    segment_keys,
)
from workers.batches.budget import (
    BatchBudgets,
    build_batch_budgets,
    lookahead_full,
)
from workers.batches.expander import Gate, InputRefused, Progress, count_requests, expand
from workers.batches.filestore import FileStore, LocalFileStore
from workers.batches.jsonl import MAX_REQUESTS, LineParser, LineTooLong, is_blank, split_lines
from workers.batches.kafka import BatchPublisher, decode_state_record, new_producer
from workers.batches.settings import BatchesSettings
from workers.batches.state import (
    CANCELLABLE,
    PAUSED_REASON_KEY,
    TRANSITIONS,
    all_done,
    fail,
    is_done,
    is_terminal,
    newer,
    transition,
    window_passed,
)
from workers.cancel_safety import complete_despite_cancel
from workers.telemetry.metrics import batch_metrics, start_metrics

log = logging.getLogger("tollway.batches")

_TICK_S = 0.2
CANCELLABLE_OR_CANCELLING = frozenset({"in_progress", "cancelling"})


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def known_model(routes: RoutesConfig) -> Callable[[str], bool]:
    def check(model: str) -> bool:
        try:
            routes.resolve(model)
        except TollwayError:
            return False
        return True

    return check


@dataclass
class Owned:
    """A batch this worker drives: its last checkpoint and what came since."""

    state: BatchState
    partition: int
    assembly: Assembly
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    cancel_requested: bool = False
    owner: str = field(default_factory=lambda: secrets.token_hex(4))
    """This ownership's token in its segments' keys (workers/batches/assembler.py)."""
    task: asyncio.Task[None] | None = None
    expansion: asyncio.Task[bool] | None = None


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, worker: BatchWorker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._worker.release({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._worker.load(assigned)


class BatchWorker:
    """One batch worker process (a member of the `tollway-batches` group)."""

    def __init__(
        self,
        kafka: KafkaSettings,
        settings: BatchesSettings,
        store: FileStore,
        routes: RoutesConfig,
        *,
        clock_ms: Callable[[], int] = wall_ms,
        client_id: str = "tollway-batches",
        budgets: BatchBudgets | None = None,
    ) -> None:
        self.kafka = kafka
        self.settings = settings
        self.store = store
        self.budgets = budgets
        self.known_model = known_model(routes)
        self.clock_ms = clock_ms
        self.owned: dict[str, Owned] = {}
        self._views: dict[int, dict[str, BatchState]] = {}  # loading partitions' latest states
        self._cancels: dict[str, bool] = {}  # cancel commands seen before their batch
        self._loading: dict[int, int] = {}  # partition -> end offset to reach before acting
        self._read_next: dict[int, int] = {}  # results partition -> next offset to apply
        self._seek_to: dict[int, int] = {}
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.state_consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap,
            group_id=settings.group_id,
            client_id=client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=max(1_000, settings.session_timeout_ms // 3),
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        self.results_consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap,
            client_id=client_id,
            group_id=None,
            enable_auto_commit=False,
        )
        self.publisher = BatchPublisher(new_producer(kafka, client_id))

    # --- lifecycle ---------------------------------------------------------------------

    async def run(self) -> None:
        await self.publisher.producer.start()
        await self.results_consumer.start()
        result_tps = [
            TopicPartition(topics.RESULTS.name, p) for p in range(topics.RESULTS.partitions)
        ]
        self.results_consumer.assign(result_tps)
        for tp, end in (await self.results_consumer.end_offsets(result_tps)).items():
            self.results_consumer.seek(tp, end)
            self._read_next[tp.partition] = end
        await self.state_consumer.start()
        self.state_consumer.subscribe([BATCH_STATE.name], listener=_Rebalance(self))
        self._tasks = [
            asyncio.create_task(self._read_results()),
            asyncio.create_task(self._checkpoint_loop()),
        ]
        try:
            while not self._stopping.is_set():
                batch = await self.state_consumer.getmany(timeout_ms=200)
                for tp, records in batch.items():
                    for record in records:
                        self._apply_state_record(tp.partition, record)
                await self._promote_loaded()
        finally:
            await self._shutdown()

    def stop(self) -> None:
        self._stopping.set()

    async def _shutdown(self) -> None:
        await self.release(set(self._views) | {o.partition for o in self.owned.values()})
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.state_consumer.stop()
        await self.results_consumer.stop()
        await self.publisher.producer.stop()

    # --- ownership -----------------------------------------------------------------------

    async def load(self, assigned: set[TopicPartition]) -> None:
        """Re-read each new partition from its start; act on it once caught up."""
        if not assigned:
            return
        ends = await self.state_consumer.end_offsets(list(assigned))
        await self.state_consumer.seek_to_beginning(*assigned)
        for tp in assigned:
            self._views[tp.partition] = {}
            self._loading[tp.partition] = ends[tp]
        log.info("loading batch-state partitions %s", sorted(tp.partition for tp in assigned))

    async def release(self, partitions: set[int]) -> None:
        """Stop driving the partitions' batches; their next owner resumes from checkpoints."""
        for batch_id, owned in list(self.owned.items()):
            if owned.partition not in partitions:
                continue
            if owned.task is not None:
                owned.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await owned.task
            del self.owned[batch_id]
        for partition in partitions:
            self._views.pop(partition, None)
            self._loading.pop(partition, None)

    async def _promote_loaded(self) -> None:
        for partition, end in list(self._loading.items()):
            tp = TopicPartition(BATCH_STATE.name, partition)
            if end > 0 and await self.state_consumer.position(tp) < end:
                continue
            del self._loading[partition]
            for state in self._views.get(partition, {}).values():
                if not is_terminal(state):
                    self._own(state, partition)
            log.info("batch-state partition %s live", partition)

    def _apply_state_record(self, partition: int, record: ConsumerRecord[bytes, bytes]) -> None:
        try:
            decoded = decode_state_record(record.key, record.value)
        except CorruptRecord:
            log.exception("undecodable batch-state record at %s@%s", partition, record.offset)
            return
        if decoded is None:
            return
        view = self._views.get(partition)
        if view is None:
            return  # not ours (a record fetched just before a revocation)
        if "command" in decoded:
            batch_id = decoded["batch_id"]
            self._cancels[batch_id] = True
            if batch_id in self.owned:
                self.owned[batch_id].cancel_requested = True
            return
        state = decoded
        if not newer(state, view.get(state["batch_id"])):
            return  # our own checkpoint coming back, or a stale copy
        view[state["batch_id"]] = state
        live = partition not in self._loading
        if live and not is_terminal(state) and state["batch_id"] not in self.owned:
            self._own(state, partition)

    def _own(self, state: BatchState, partition: int) -> None:
        batch_id = state["batch_id"]
        owned = Owned(state, partition, Assembly(state), cancel_requested=batch_id in self._cancels)
        self.owned[batch_id] = owned
        for p, offset in state["results_offsets"].items():
            if offset < self._read_next.get(int(p), offset):
                self._seek_to[int(p)] = min(offset, self._seek_to.get(int(p), offset))
                # Rewound now, not when the reader applies the seek: a checkpoint in between
                # must not claim results this batch has not been given (an under-claim only
                # re-reads results, which the bitmap drops; an over-claim loses them).
                self._read_next[int(p)] = self._seek_to[int(p)]
        owned.task = asyncio.create_task(self._drive(owned))

    # --- results -------------------------------------------------------------------------

    async def _read_results(self) -> None:
        while True:
            for partition, offset in list(self._seek_to.items()):
                self.results_consumer.seek(TopicPartition(topics.RESULTS.name, partition), offset)
                self._read_next[partition] = offset
            self._seek_to.clear()
            batch = await self.results_consumer.getmany(timeout_ms=200, max_records=5_000)
            for tp, records in batch.items():
                if tp.partition in self._seek_to:
                    continue  # about to re-read from an earlier offset
                for record in records:
                    self._apply_result(tp.partition, record)
                    self._read_next[tp.partition] = record.offset + 1

    def _apply_result(self, partition: int, record: ConsumerRecord[bytes, bytes]) -> None:
        if record.key is None or not record.key.startswith(b"breq_"):
            return
        parsed = parse_request_id(record.key.decode(errors="replace"))
        if parsed is None:
            return
        owned = self.owned.get(parsed[0])
        if owned is None or is_terminal(owned.state) or owned.state["status"] == "finalizing":
            return
        if record.offset < owned.state["results_offsets"].get(str(partition), 0):
            return
        try:
            result = codec.decode("result", record.value or b"")
        except CorruptRecord:
            log.exception("undecodable result at %s@%s", partition, record.offset)
            return
        custom_id = result["metadata"].get(META_CUSTOM_ID, "")
        owned.assembly.add_result(parsed[1], custom_id, result)
        batch_metrics().results.inc()

    # --- checkpoints ---------------------------------------------------------------------

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.checkpoint_interval_s)
            for owned in list(self.owned.values()):
                if owned.assembly.pending and owned.state["status"] in CANCELLABLE_OR_CANCELLING:
                    try:
                        async with owned.lock:
                            await self._checkpoint(owned)
                    except KafkaError:
                        log.exception("checkpoint of %s failed", owned.state["batch_id"])

    async def _checkpoint(
        self, owned: Owned, change: Callable[[BatchState], BatchState] | None = None
    ) -> None:
        """Spool what is pending as the next segment, then publish the new state.

        Call with `owned.lock` held. The results positions are snapshotted in the
        same step as the pending outcomes (no await in between), so the checkpoint
        claims exactly what the segment holds. A cancel (a revocation, a shutdown)
        waits for a segment write already under way: no write of this owner lands
        after `release` returns (its token keeps a later one harmless anyway).
        """
        positions = dict(self._read_next)
        flush, bitmap = owned.assembly.take()
        state = owned.state
        if flush.lines:
            key = next_segment_key(state, owned.owner)
            await complete_despite_cancel(asyncio.to_thread(self.store.put, key, flush.payload()))
        new = flush.apply(state, bitmap, self.clock_ms(), owned.owner)
        offsets = dict(state["results_offsets"])
        for partition, offset in positions.items():
            offsets[str(partition)] = max(offset, offsets.get(str(partition), 0))
        new["results_offsets"] = offsets
        if change is not None:
            new = change(new)
        await self._publish(owned, new)

    async def _publish(self, owned: Owned, new: BatchState) -> None:
        await self.publisher.state(new)
        owned.state = new
        view = self._views.get(owned.partition)
        if view is not None:
            view[new["batch_id"]] = new  # so our own records coming back read as stale

    # --- driving one batch ---------------------------------------------------------------

    async def _drive(self, owned: Owned) -> None:
        batch_id = owned.state["batch_id"]
        try:
            await self._drive_steps(owned)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Our bug, not the batch's: leave it to the next owner or restart, loudly.
            log.exception("driving batch %s failed; it resumes on the next assignment", batch_id)
        finally:
            if is_terminal(owned.state):
                self.owned.pop(batch_id, None)
                self._cancels.pop(batch_id, None)

    async def _drive_steps(self, owned: Owned) -> None:
        if owned.state["status"] == "validating" and not await self._start(owned):
            return
        try:
            await self._watch(owned)
        finally:
            await self._stop_expansion(owned)

    async def _stop_expansion(self, owned: Owned) -> None:
        if owned.expansion is not None and not owned.expansion.done():
            owned.expansion.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await owned.expansion

    def _keep_expanding(self, owned: Owned) -> None:
        """Start (or after a failure, restart) the expansion of an in-progress batch."""
        state = owned.state
        if state["status"] != "in_progress" or state["expanded"] or owned.cancel_requested:
            return
        task = owned.expansion
        if task is not None and task.done() and not task.cancelled() and task.exception():
            log.error(
                "expansion of %s failed; restarting", state["batch_id"], exc_info=task.exception()
            )
            task = None
        if task is None:
            owned.expansion = asyncio.create_task(self._expand(owned))

    async def _start(self, owned: Owned) -> bool:
        """validating -> in_progress (results offsets fixed first) or -> failed."""
        state = owned.state
        meta = await asyncio.to_thread(batch_files.load_meta, self.store, state["input_file_id"])
        problem: tuple[str, str] | None = None
        if meta is None:
            problem = ("invalid_input_file", f"Input file {state['input_file_id']} not found.")
        elif meta["lines"] > MAX_REQUESTS:
            chunks = self.store.chunks(batch_files.content_key(meta["id"]))
            if await asyncio.to_thread(count_requests, chunks) > MAX_REQUESTS:
                problem = ("too_many_requests", f"More than {MAX_REQUESTS} requests.")
        now = self.clock_ms()
        if problem is not None:
            await self._publish(owned, fail(state, *problem, now))
            return False
        async with owned.lock:
            if owned.cancel_requested:
                await self._publish(owned, transition(owned.state, "cancelling", now))
                return True
            await self._checkpoint(owned, _to("in_progress", now))
        return True

    def _gate(self, owned: Owned) -> Gate | None:
        """Budget pacing of the expansion (workers/batches/budget.py); None without budgets."""
        budgets = self.budgets
        if budgets is None:
            return None
        team_id = owned.state["team_id"]

        async def gate(enqueued: int, model: str | None) -> bool:
            while not owned.cancel_requested:
                if not budgets.paced(team_id, model):
                    break
                reason = budgets.pause_reason(team_id, model, self.clock_ms())
                if reason is None:
                    state = owned.state
                    finished = state["completed"] + state["failed"] + owned.assembly.pending
                    if not lookahead_full(enqueued, finished, self.settings.budget_lookahead_lines):
                        break
                await self._set_paused(owned, reason)
                await asyncio.sleep(self.settings.budget_poll_s)
            if owned.cancel_requested:
                return False
            await self._set_paused(owned, None)
            return True

        return gate

    async def _set_paused(self, owned: Owned, reason: str | None) -> None:
        """Record (or clear) why the expansion waits, in the state's reserved metadata."""
        if owned.state["metadata"].get(PAUSED_REASON_KEY) == reason:
            return

        def change(state: BatchState) -> BatchState:
            metadata = dict(state["metadata"])
            if reason is None:
                metadata.pop(PAUSED_REASON_KEY, None)
            else:
                metadata[PAUSED_REASON_KEY] = reason
            state["metadata"] = metadata
            return state

        log.info("batch %s: %s", owned.state["batch_id"], reason or "expansion resumed")
        async with owned.lock:
            await self._checkpoint(owned, change)

    async def _expand(self, owned: Owned) -> bool:
        content = batch_files.content_key(owned.state["input_file_id"])
        if await asyncio.to_thread(self.store.size, content) is None:
            # Deleted from the store after validation: failing beats restarting forever.
            missing = f"Input file {owned.state['input_file_id']} is no longer in the store."
            await self._refuse(owned, InputRefused("invalid_input_file", missing))
            return False
        parser = LineParser(owned.state["endpoint"], self.known_model)
        chunks = self.store.chunks(content)
        gate = self._gate(owned)
        checkpoint_lines = self.settings.expand_checkpoint_lines
        if gate is not None:  # groups no larger than half the lookahead: pacing needs steps
            checkpoint_lines = min(
                checkpoint_lines, max(1, self.settings.budget_lookahead_lines // 2)
            )

        async def checkpoint(progress: Progress) -> None:
            def change(state: BatchState) -> BatchState:
                state["enqueued"] = progress.scanned_through_line
                state["total"] = progress.total
                state["model"] = progress.model
                state["expanded"] = progress.expanded
                return state

            async with owned.lock:
                await self._checkpoint(owned, change)

        started = time.monotonic()
        try:
            expanded = await expand(
                owned.state,
                chunks,
                parser=parser,
                assembly=owned.assembly,
                publish=self.publisher.requests,
                checkpoint=checkpoint,
                cancelled=lambda: owned.cancel_requested,
                now_ms=self.clock_ms,
                checkpoint_lines=checkpoint_lines,
                gate=gate,
            )
        except InputRefused as refused:
            await self._refuse(owned, refused)
            return False
        elapsed = time.monotonic() - started
        log.info(
            "batch %s: %d lines expanded in %.2fs (%.0f lines/s)",
            owned.state["batch_id"],
            owned.state["total"],
            elapsed,
            owned.state["total"] / max(elapsed, 1e-6),
        )
        return expanded

    async def _refuse(self, owned: Owned, refused: InputRefused) -> None:
        """Fail the batch for its input file (a batch-level error, no output files)."""
        async with owned.lock:
            failed = fail(owned.state, refused.code, refused.message, self.clock_ms())
            await self._publish(owned, failed)

    async def _watch(self, owned: Owned) -> None:
        """Tick until the batch is done, cancelled or out of time, then finalise it."""
        while not is_terminal(owned.state):
            self._keep_expanding(owned)
            now = self.clock_ms()
            status = owned.state["status"]
            if owned.cancel_requested and status in CANCELLABLE:
                async with owned.lock:
                    await self._checkpoint(owned, _to("cancelling", now))
                continue
            if status == "cancelling":
                started = owned.state["cancelling_at_ms"] or now
                grace_over = now - started >= self.settings.cancel_grace_s * 1000
                if grace_over or all_done(owned.state):
                    await self._finish(owned, "cancelled", "batch_cancelled")
                    continue
            elif status in CANCELLABLE and window_passed(owned.state, now):
                await self._finish(owned, "expired", "batch_expired")
                continue
            elif status == "in_progress" and all_done(owned.state):
                async with owned.lock:
                    await self._publish(owned, transition(owned.state, "finalizing", now))
                continue
            elif status == "finalizing":
                await self._finish(owned, "completed", None)
                continue
            await asyncio.sleep(_TICK_S)

    async def _finish(self, owned: Owned, final: BatchStatus, unfinished_code: str | None) -> None:
        """Record unfinished lines (cancel/expiry), write the files, publish the final state."""
        await self._stop_expansion(owned)
        async with owned.lock:
            if unfinished_code is not None:
                await self._mark_unfinished(owned, unfinished_code)
            await self._checkpoint(owned)
            state = owned.state
            try:
                output_id, error_id = await asyncio.to_thread(self._write_files, state)
            except MissingSegment:
                if "failed" not in TRANSITIONS[state["status"]]:
                    raise  # cancelling: logged by _drive, retried by the next owner
                log.exception("batch %s: spool segment missing; failing it", state["batch_id"])
                message = (
                    "Outcomes spooled for this batch are missing from the file store, "
                    "so complete output files cannot be written."
                )
                failed = fail(state, "output_incomplete", message, self.clock_ms())
                await self._publish(owned, failed)
                batch_metrics().finished.labels("failed").inc()
                return
            now = self.clock_ms()
            done = transition(state, final, now)
            done["output_file_id"] = output_id
            done["error_file_id"] = error_id
            if unfinished_code is not None:
                done["expanded"] = True
                done["total"] = max(done["total"], done["completed"] + done["failed"])
            await self._publish(owned, done)
        batch_metrics().finished.labels(final).inc()
        log.info(
            "batch %s %s: %d completed, %d failed",
            state["batch_id"],
            final,
            done["completed"],
            done["failed"],
        )

    async def _mark_unfinished(self, owned: Owned, code: str) -> None:
        """Give every request line without an outcome an error line."""
        message = {
            "batch_cancelled": "The batch was cancelled before this request ran.",
            "batch_expired": "The batch's completion window passed before this request ran.",
        }[code]
        snapshot = bytes(owned.assembly.bitmap)
        key = batch_files.content_key(owned.state["input_file_id"])
        unfinished = await asyncio.to_thread(_unfinished_lines, self.store, key, snapshot)
        for line, custom_id in unfinished:  # in the loop: the results reader shares the bitmap
            owned.assembly.add_error(line, custom_id, code, message, invalid=False)

    def _segment(self, key: str) -> bytes:
        data = self.store.get(key)
        if data is None:  # the state names it, so it was written: the store lost it
            raise MissingSegment(key)
        return data

    def _write_files(self, state: BatchState) -> tuple[str | None, str | None]:
        """Output and error files from the spool (blocking: run in a thread)."""
        output, errors, _, _ = build_files(self._segment(key) for key in segment_keys(state))
        ids: list[str | None] = []
        for kind, data in (("output", output), ("error", errors)):
            if not data:
                ids.append(None)
                continue
            file_id = batch_files.output_file_id(state["batch_id"], kind)  # type: ignore[arg-type]
            self.store.put(batch_files.content_key(file_id), data)
            batch_files.save_meta(
                self.store,
                {
                    "id": file_id,
                    "team_id": state["team_id"],
                    "bytes": len(data),
                    "lines": data.count(b"\n"),
                    "created_at_ms": self.clock_ms(),
                    "filename": f"{state['batch_id']}_{kind}.jsonl",
                    "purpose": "batch_output",
                },
            )
            ids.append(file_id)
        return ids[0], ids[1]


class MissingSegment(RuntimeError):
    """A spool segment the state names is not in the store (deleted, or a store that
    lost it): the batch fails with `output_incomplete` rather than get output files
    without its lines."""


def _to(status: BatchStatus, now_ms: int) -> Callable[[BatchState], BatchState]:
    return lambda state: transition(state, status, now_ms)


def _unfinished_lines(store: FileStore, key: str, done: bytes) -> list[tuple[int, str | None]]:
    """(line, custom_id) of the request lines not marked in `done` (blocking)."""
    try:
        lines = list(split_lines(store.chunks(key)))
    except KeyError:
        return []
    return [
        (line, _custom_id(raw))
        for line, raw in lines
        if not (isinstance(raw, bytes) and is_blank(raw)) and not is_done(done, line)
    ]


def _custom_id(raw: bytes | LineTooLong) -> str | None:
    if isinstance(raw, LineTooLong):
        return None
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    value = obj.get("custom_id") if isinstance(obj, dict) else None
    return value if isinstance(value, str) else None


async def serve(kafka: KafkaSettings, settings: BatchesSettings) -> None:
    """Run one batch worker until SIGTERM/SIGINT."""
    routes = load_routes(settings.routes_file)
    budgets = build_batch_budgets(kafka, routes)  # None: no budgets, no pacing
    worker = BatchWorker(
        kafka, settings, LocalFileStore(settings.store_dir), routes, budgets=budgets
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    log.info("batch worker starting against %s (store %s)", kafka.bootstrap, settings.store_dir)
    start_metrics(
        "batches-worker",
        settings.metrics_port,
        bootstrap=kafka.bootstrap,
        lag_groups=(settings.group_id,),
    )
    if budgets is not None:
        await budgets.view.start()
    try:
        await worker.run()
    finally:
        if budgets is not None:
            await budgets.view.stop()
