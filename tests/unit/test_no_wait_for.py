"""No `asyncio.wait_for` in the services: on Python 3.11 it can swallow a cancellation.

If the awaited future completes in the same loop iteration as the task is cancelled,
3.11's `wait_for` returns the result instead of raising CancelledError (fixed in 3.12,
gh-86296). A background loop that wraps a call in it then survives its `cancel()`, and
the `await task` of an orderly stop waits forever (docs/decisions/0026). The services use
`asyncio.timeout` / `asyncio.timeout_at`, which do not.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICE_PACKAGES = ("ingress", "workers", "analytics", "schemas", "deploy")


def test_services_use_asyncio_timeout_not_wait_for() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for package in SERVICE_PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for number, line in enumerate(path.read_text("utf-8").splitlines(), start=1)
        if "asyncio.wait_for(" in line
    ]
    assert offenders == [], "use `async with asyncio.timeout(...)` instead"


def test_the_scan_sees_the_service_sources() -> None:
    assert sum(1 for _ in (ROOT / "ingress").rglob("*.py")) > 10
