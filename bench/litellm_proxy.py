"""LiteLLM's proxy for the side-by-side benchmark: its own venv (pinned), config, process.

Why a separate virtual environment: LiteLLM's proxy pins its own versions of
pydantic, httpx, uvicorn, fastapi...; installed beside Tollway it would change
what Tollway runs on. `ensure_venv` creates `.tollway/bench-litellm` (or
TOLLWAY_BENCH_LITELLM_VENV) and installs exactly `litellm[proxy]==LITELLM_VERSION`
with the venv's own pip, from the package index pip is configured for, every
dependency held to bench/litellm-constraints.txt; a venv that already has that
version is reused as is.

The proxy runs as the LiteLLM docs start it (`litellm --config FILE --port P
--num_workers 2`), with one model per mock endpoint (`openai/<name>` + `api_base`
at the mock), no database, no Redis, no master key (Tollway checks no keys yet
either; LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY), no retries, logging at
ERROR, no telemetry, the model cost map read from the package (no network at start), and uvicorn's
worker health-check timeout raised (WORKER_HEALTHCHECK_S). Everything on loopback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import httpx

LITELLM_VERSION = "1.106.12"
"""Pinned: the newest release whose [proxy] extra resolves here (1.107.0 is never used: a
compromised release; 1.108.x and 1.110.x need proxy-extras builds not on the index)."""

WORKERS = 2
WORKER_HEALTHCHECK_S = 120
"""uvicorn's supervisor kills a worker that does not answer its ping within this many seconds
(uvicorn's default, 5 s, is shorter than LiteLLM's import on 2 busy cores: the workers were
killed and respawned forever). LiteLLM's own `--timeout_worker_healthcheck` raises it; it
changes nothing once a worker serves, except that an overloaded worker is not killed."""
REPO = Path(__file__).resolve().parent.parent
DEFAULT_VENV = REPO / ".tollway" / "bench-litellm"
CONSTRAINTS = Path(__file__).resolve().parent / "litellm-constraints.txt"
"""Every dependency's exact version as measured (pip freeze): a fresh clone installs the same."""


def venv_dir() -> Path:
    return Path(os.environ.get("TOLLWAY_BENCH_LITELLM_VENV", str(DEFAULT_VENV)))


def installed_version(venv: Path) -> str | None:
    """The litellm version in `venv`, or None (no venv, no litellm, or no CLI)."""
    python = venv / "bin" / "python"
    if not python.exists() or not (venv / "bin" / "litellm").exists():
        return None
    done = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or None if done.returncode == 0 else None


def ensure_venv(venv: Path | None = None, log: IO[str] | None = None) -> tuple[Path, str]:
    """Create or reuse the LiteLLM venv at the pinned version; returns (venv, version)."""
    venv = venv or venv_dir()
    version = installed_version(venv)
    if version == LITELLM_VERSION:
        return venv, version
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    print(f"installing litellm[proxy]=={LITELLM_VERSION} into {venv} ...", file=log or sys.stderr)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
         "--constraint", str(CONSTRAINTS), f"litellm[proxy]=={LITELLM_VERSION}"],
        check=True,
    )  # fmt: skip
    version = installed_version(venv)
    if version != LITELLM_VERSION:
        raise RuntimeError(f"litellm {LITELLM_VERSION} not installed in {venv} (found {version})")
    return venv, version


def config_yaml(models: Mapping[str, str]) -> str:
    """The proxy config: each client-facing model name -> `openai/<name>` at its api_base."""
    lines = ["model_list:"]
    for name, api_base in models.items():
        lines += [
            f"  - model_name: {name}",
            "    litellm_params:",
            f"      model: openai/{name}",
            f"      api_base: {api_base}",
            "      api_key: sk-mock-loopback",
        ]
    lines += [
        "litellm_settings:",
        "  num_retries: 0",
        "  request_timeout: 30",
        "  set_verbose: false",
        "  json_logs: false",
        "  telemetry: false",
        "router_settings:",
        "  num_retries: 0",
        "general_settings:",
        "  disable_spend_logs: true",
        "  disable_error_logs: true",
    ]
    return "\n".join(lines) + "\n"


QUIET_ENV = {
    "LITELLM_LOG": "ERROR",
    "LITELLM_MODE": "PRODUCTION",  # no .env loading from the working directory
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # the packaged cost map: no network at start
    "DISABLE_SCHEMA_UPDATE": "True",
    "NO_DOCS": "True",
    # No master key: Tollway has no virtual keys yet either, so neither side authenticates.
    # (With a key, LiteLLM's auth path would add its own cost per request.)
    "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
}


class LiteLLMProxy:
    """One `litellm` proxy process (with its uvicorn workers) on 127.0.0.1:`port`."""

    def __init__(self, venv: Path, config: Path, port: int, log_path: Path) -> None:
        self.venv, self.config, self.port, self.log_path = venv, config, port, log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout_s: float = 600.0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_"))}
        env.update(QUIET_ENV)
        env["PATH"] = f"{self.venv / 'bin'}:{env.get('PATH', '')}"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(self.venv / "bin" / "litellm"), "--config", str(self.config),
             "--host", "127.0.0.1", "--port", str(self.port),
             "--num_workers", str(WORKERS), "--telemetry", "False",
             "--timeout_worker_healthcheck", str(WORKER_HEALTHCHECK_S)],
            env=env, stdout=self._log, stderr=subprocess.STDOUT,
            cwd=self.log_path.parent, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"litellm exited ({self.process.returncode}); see {self.log_path}"
                )
            try:
                if httpx.get(f"{self.url}/health/liveliness", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"litellm not ready in {timeout_s:.0f} s; see {self.log_path}")

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # its own session: workers included
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
