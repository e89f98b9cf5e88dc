"""Optional experiment tracking with Weights & Biases: one wandb run per job.

``wandb.mode`` chooses:

- ``off`` (the default): nothing is imported or written;
- ``auto``: ``online`` when an API key is configured (``WANDB_API_KEY`` or ``wandb login``) and
  the wandb server answers, else ``offline``;
- ``offline``: the run is written under the job folder (``wandb/offline-run-*``); upload it
  later with ``wandb sync``;
- ``online``: logged live.

The run's id is derived from the job folder, so a resumed job continues its run; the run's
group is ``wandb.group`` (a sweep sets its name there). The configuration (the job's arguments
and hyperparameters) is logged at the start and every record's numbers at its step.

Tracking never fails a job: any error from wandb (not installed, no network, a full disk, a
server error) is logged once as a warning and tracking stops for that job.
"""

from __future__ import annotations

import hashlib
import logging
import netrc
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

DEFAULT_HOST = "https://api.wandb.ai"


def _wandb_host() -> str:
    return os.environ.get("WANDB_BASE_URL", DEFAULT_HOST)


def has_api_key() -> bool:
    """Whether an API key is configured: ``WANDB_API_KEY``, or the netrc entry ``wandb login`` writes."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(_wandb_host()).hostname or ""
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def server_reachable(timeout_s: float = 3.0) -> bool:
    """Whether a TCP connection to the wandb server opens within ``timeout_s``."""
    url = urlparse(_wandb_host())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def resolve_mode(mode: str) -> str:
    """``auto`` -> ``online`` or ``offline`` (see the module docstring); other modes unchanged."""
    if mode != "auto":
        return mode
    return "online" if has_api_key() and server_reachable() else "offline"


def run_id(job_dir: str | os.PathLike) -> str:
    """A wandb run id for the job folder: stable across resumes, distinct across sweeps."""
    return hashlib.md5(str(Path(job_dir).resolve()).encode("utf-8")).hexdigest()


class Tracker:
    """Logs one job to wandb; every method is a no-op when tracking is off or has failed."""

    def __init__(self, log: logging.Logger):
        self._log = log
        self._run: Any = None

    @property
    def active(self) -> bool:
        return self._run is not None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        self.finish(exit_code=0 if exc_type is None else 1)

    def _failed(self, what: str, exc: BaseException) -> None:
        self._log.warning(
            f"wandb: {what} failed ({type(exc).__name__}: {exc}); tracking stops, training goes on"
        )
        self._run = None

    def start(
        self,
        options: Mapping[str, Any],
        job_dir: Path,
        name: str,
        config: Mapping[str, Any],
    ) -> None:
        """Open the job's run with ``options`` (``mode``, ``project``, ``entity``, ``group``)."""
        if self._run is not None or options.get("mode", "off") == "off":
            return
        try:
            import wandb
        except ImportError as exc:
            self._failed("importing wandb (install it with: pip install 'sage-bench[wandb]')", exc)
            return
        try:
            mode = resolve_mode(options["mode"])

            self._run = wandb.init(
                mode=mode,
                project=options.get("project"),
                entity=options.get("entity"),
                group=options.get("group"),
                name=name,
                id=run_id(job_dir),
                resume="allow",
                dir=str(job_dir),
                config=dict(config),
                settings=wandb.Settings(console="off", silent=True),
            )
            self._log.info(f"wandb: {mode} run {self._run.id}")
        except Exception as exc:
            self._failed("starting a run", exc)

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        if self._run is None:
            return
        try:
            self._run.log(dict(metrics), step=step)
        except Exception as exc:
            self._failed("logging", exc)

    def finish(self, exit_code: int = 0) -> None:
        if self._run is None:
            return
        try:
            self._run.finish(exit_code=exit_code)
        except Exception as exc:
            self._failed("finishing the run", exc)
        self._run = None
