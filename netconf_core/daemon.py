"""Running a NETCONF service (agent or controller) as a daemon: logging set-up and serving
until SIGINT/SIGTERM, with the bound port announced in a ready file for supervisors."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class JsonFormatter(logging.Formatter):
    """One JSON object per line (`--log-format json`), for journald/log collectors: RFC 3339
    UTC time with milliseconds, level, logger, message, pid, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        t = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        out = {
            "time": t.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname, "logger": record.name,
            "message": record.getMessage(), "pid": record.process,
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(level: str, as_json: bool = False) -> None:
    handler = logging.StreamHandler()
    if as_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    logging.getLogger("asyncssh").setLevel(max(logging.WARNING, logging.getLevelName(level)))


def write_ready_file(path: str, port: int) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{port}\n")
    os.replace(tmp, path)


async def serve_until_signalled(
    start: Callable[[], Awaitable[None]],
    stop: Callable[[], Awaitable[None]],
    port: Callable[[], int],
    ready_file: str | None = None,
) -> None:
    await start()
    if ready_file:
        write_ready_file(ready_file, port())
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    log.info("shutting down")
    await stop()
