"""A Tollway component as its own OS process, for the integration tests that need several.

Shared by budget_stack.py (cost, budget and ingress processes) and test_cost_budget.py
(cost and budget processors, SIGKILLed and restarted). Each process runs from the repo
root with the test's environment plus `env`, in its own session (a signal to the test
runner does not reach it), and appends its output to `log_path`, which is both the
readiness signal (`wait_log`) and the text shown when it dies.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOG_TAIL_CHARS = 3000
"""How much of the log an assertion message shows."""


@dataclass
class ModuleProcess:
    """`python -m <args>` as one OS process, its output in a log file."""

    args: list[str]
    """The module, then its arguments."""
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", *self.args],
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text("utf-8", errors="replace")

    def check_alive(self) -> None:
        assert self.process is not None
        assert self.process.poll() is None, f"{self.args} died:\n{self.log()[-LOG_TAIL_CHARS:]}"

    async def wait_log(
        self, marker: str, *, timeout_s: float, times: int = 1, poll_s: float = 0.2
    ) -> None:
        """Wait until `marker` is in the log `times` times (one per start, for restarts).

        Fails the test at once if the process died, or after `timeout_s` (seconds)."""
        deadline = time.monotonic() + timeout_s
        while self.log().count(marker) < times:
            self.check_alive()
            assert time.monotonic() < deadline, (
                f"{self.args} not ready:\n{self.log()[-LOG_TAIL_CHARS:]}"
            )
            await asyncio.sleep(poll_s)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 15 s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
