"""Run a chaos plan against a running stack, and keep every process alive in between.

Each fault runs as its own task at its planned moment; faults on the same target wait
for each other (one lock per target), so a kill never lands on a process another fault
is holding stopped. Blocking stack calls (`Stack.restart` waits for health over HTTP,
`kafka.sh` waits for the broker) run in threads so the load keeps its rate.

The watchdog plays the supervisor (systemd, Kubernetes): a process that exits while
no fault holds it is recorded as an *unplanned exit*, with the end of its log, and
restarted. Unplanned exits are reported, not hidden: each is a process that could not
ride out what the others did to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from deploy.stack import Component, Stack, StackError, kafka
from tests.chaos.plan import Fault
from tests.chaos.receiver import Receiver

T = TypeVar("T")
LOG_TAIL_CHARS = 2500
BROKER_START_ENV = {"TOLLWAY_KAFKA_START_TIMEOUT": "300"}
RESTART_RETRY_S = 2.0
RESTART_DEADLINE_S = 180.0


@dataclass(frozen=True, slots=True)
class Event:
    at_s: float
    """Seconds after the load started."""
    what: str


@dataclass
class UnplannedExit:
    name: str
    at_s: float
    returncode: int | None
    log_tail: str


@dataclass
class FaultRunner:
    stack: Stack
    receiver: Receiver
    started: float = field(default_factory=time.monotonic)
    events: list[Event] = field(default_factory=list)
    unplanned: list[UnplannedExit] = field(default_factory=list)
    done: list[Fault] = field(default_factory=list)
    mock_answered: int = 0
    processes: dict[int, str] = field(default_factory=dict)
    """pid -> `<component>#<start>`: who ran what (a router id carries its pid)."""
    """Calls the mock provider answered 200 before each of its kills (its counters reset)."""
    _locks: defaultdict[str, asyncio.Lock] = field(
        default_factory=lambda: defaultdict(asyncio.Lock)
    )
    _held: set[str] = field(default_factory=set)
    _threads: set[asyncio.Future[Any]] = field(default_factory=set)

    def __post_init__(self) -> None:
        for component in self.stack.components:
            self._remember(component)

    def _remember(self, component: Component) -> None:
        if component.process is not None:
            starts = sum(1 for label in self.processes.values() if label[: label.rfind("#")]
                         == component.name)  # fmt: skip
            self.processes[component.process.pid] = f"{component.name}#{starts + 1}"

    def note(self, what: str) -> None:
        self.events.append(Event(round(time.monotonic() - self.started, 1), what))

    async def run(self, plan: tuple[Fault, ...]) -> None:
        # A TaskGroup, not gather: when one fault fails the others are cancelled instead of
        # going on (and restarting processes) behind the teardown.
        async with asyncio.TaskGroup() as group:
            for fault in plan:
                group.create_task(self._at(fault))

    async def _at(self, fault: Fault) -> None:
        await asyncio.sleep(max(0.0, self.started + fault.at_s - time.monotonic()))
        async with self._locks[fault.target]:
            self._held.add(fault.target)
            try:
                await self._apply(fault)
            finally:
                self._held.discard(fault.target)
        self.done.append(fault)

    async def _apply(self, fault: Fault) -> None:
        # Each undo is in a `finally`: a cancelled run (another task failed) still gets its
        # broker back and no process is left stopped.
        if fault.kind == "receiver_down":
            self.note("receiver answers 503")
            self.receiver.failing = True
            try:
                await asyncio.sleep(fault.hold_s)
            finally:
                self.receiver.failing = False
            self.note("receiver answers again")
            return
        if fault.kind == "broker_restart":
            self.note("kafka stop")
            try:
                await self._blocking(kafka, "stop")
                await asyncio.sleep(fault.hold_s)
            finally:
                # On 2 loaded cores the JVM alone took over a minute to start once.
                started = await self._blocking(kafka, "start", BROKER_START_ENV)
            assert started.returncode == 0, f"the broker did not restart:\n{started.stderr}"
            self.note("kafka started again")
            return
        component = self.stack.get(fault.target)
        if fault.kind in ("freeze", "provider_hang"):
            self.note(f"SIGSTOP {component.name}")
            component.signal(signal.SIGSTOP)
            try:
                await asyncio.sleep(fault.hold_s)
            finally:
                component.signal(signal.SIGCONT)
            self.note(f"SIGCONT {component.name}")
            return
        if fault.kind == "provider_down":
            self.mock_answered += await self._mock_answered()
        await self._kill(component)
        await asyncio.sleep(fault.hold_s)
        await self._restart(component.name)

    async def _kill(self, component: Component) -> None:
        assert component.process is not None
        component.signal(signal.SIGKILL)
        await asyncio.to_thread(component.process.wait)
        self.note(f"SIGKILL {component.name}")

    async def _restart(self, name: str) -> None:
        """Start `name` again; a start that fails (the process exits before it is healthy,
        e.g. the ingress while the broker is away) is an unplanned exit, retried as a
        supervisor would, every `RESTART_RETRY_S`, for at most `RESTART_DEADLINE_S`."""
        deadline = time.monotonic() + RESTART_DEADLINE_S
        while True:
            try:
                await self._blocking(self.stack.restart, name)
            except StackError:
                component = self.stack.get(name)
                self._remember(component)
                self._unplanned(component, "exited while starting")
                assert time.monotonic() < deadline, f"{name} never started again"
                await asyncio.sleep(RESTART_RETRY_S)
                continue
            self._remember(self.stack.get(name))
            self.note(f"restarted {name}")
            return

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in a thread. A thread cannot be cancelled: if the run is, the call
        still finishes (a restart would start a process after the teardown), so it is
        shielded and kept until `quiesce()` has waited for it."""
        future = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        self._threads.add(future)
        future.add_done_callback(self._threads.discard)
        return await asyncio.shield(future)

    async def quiesce(self) -> None:
        """Wait for every blocking call still running (before the stack is stopped)."""
        if self._threads:
            await asyncio.gather(*self._threads, return_exceptions=True)

    def _unplanned(self, component: Component, what: str) -> None:
        assert component.process is not None
        tail = ""
        if component.log_path is not None:
            tail = component.log_path.read_text("utf-8", errors="replace")
        self.unplanned.append(
            UnplannedExit(
                component.name,
                round(time.monotonic() - self.started, 1),
                component.process.returncode,
                tail[-LOG_TAIL_CHARS:],
            )
        )
        self.note(f"UNPLANNED: {component.name} {what}; restarting it")

    async def _mock_answered(self) -> int:
        url = f"http://127.0.0.1:{self.stack.mock_port}/stats"
        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                stats = (await client.get(url)).json()
        except httpx.HTTPError:
            return 0
        return int(stats["by_status"].get("200", 0))

    async def mock_answered_total(self) -> int:
        return self.mock_answered + await self._mock_answered()

    async def watchdog(self, stop: asyncio.Event) -> None:
        """Restart any process that exited while no fault held it (see module docstring)."""
        while not stop.is_set():
            for component in self.stack.components:
                if component.name in self._held or component.alive():
                    continue
                if self._locks[component.name].locked():
                    continue
                async with self._locks[component.name]:
                    if component.alive():
                        continue
                    self._unplanned(component, "exited")
                    await self._restart(component.name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
