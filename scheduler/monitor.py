"""The web monitor: one page that polls JSON endpoints, plus /metrics and /healthz.

Served by aiohttp on its own port (``--monitor-port``, default 7071, loopback unless
told otherwise). Endpoints:

- ``GET /``                      the live page (no build step: static HTML + vanilla JS)
- ``GET /jobs/{id}``             a job's page with its tasks and a cancel button
- ``GET /api/stats``             counts, throughput, per-user load, recent tasks, series
- ``GET /api/workers``           local and remote workers
- ``GET /api/jobs/{id}``         a job's status and its tasks (first 1,000)
- ``POST /api/jobs/{id}/cancel`` cancel a job (or a task id)
- ``GET /metrics``               Prometheus text format
- ``GET /healthz``               200 ``{"ok": true}`` or 503 with the reasons
"""

from __future__ import annotations

import time
from importlib import resources
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from scheduler.errors import NotFound
from scheduler.metrics import CONTENT_TYPE, render

if TYPE_CHECKING:
    from scheduler.app import Scheduler

log = structlog.get_logger("taskmill.monitor")

JOB_TASKS_SHOWN = 1000


def _static(name: str) -> str:
    return resources.files("scheduler").joinpath("static", name).read_text(encoding="utf-8")


def _recent(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in reversed(results):
        started, finished = r.get("started"), r.get("finished")
        out.append(
            {
                "id": r.get("id"),
                "job": r.get("job"),
                "state": r.get("state"),
                "exit_code": r.get("exit_code"),
                "worker": r.get("worker"),
                "duration_s": (finished - started) if started and finished else None,
                "finished": finished,
            }
        )
    return out


class Monitor:
    def __init__(self, scheduler: Scheduler, host: str, port: int) -> None:
        self.scheduler = scheduler
        self.host = host
        self.port = port
        self.app = web.Application()
        self.app.add_routes(
            [
                web.get("/", self.page),
                web.get("/jobs/{id}", self.job_page),
                web.get("/api/stats", self.api_stats),
                web.get("/api/workers", self.api_workers),
                web.get("/api/jobs/{id}", self.api_job),
                web.post("/api/jobs/{id}/cancel", self.api_cancel),
                web.get("/metrics", self.metrics),
                web.get("/healthz", self.healthz),
            ]
        )
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server  # aiohttp exposes the bound port only here
        if server is not None and self.port == 0:
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        log.info("monitor listening", url=f"http://{self.host}:{self.port}/")

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # --- pages ---------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(text=_static("monitor.html"), content_type="text/html")

    async def job_page(self, request: web.Request) -> web.Response:
        return web.Response(text=_static("job.html"), content_type="text/html")

    # --- JSON ----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        sched = self.scheduler
        stats = sched.stats()
        stats["throughput_1m"] = sched.sampler.throughput(60.0)
        stats["series"] = sched.sampler.series()
        stats["recent"] = _recent(list(sched.table.recent)[-50:])
        stats["time"] = time.time()
        return stats

    async def api_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def api_workers(self, request: web.Request) -> web.Response:
        return web.json_response({"workers": self.scheduler.all_workers()})

    async def api_job(self, request: web.Request) -> web.Response:
        job_id = request.match_info["id"]
        table = self.scheduler.table
        try:
            status = table.status(job_id)
        except NotFound as exc:
            return web.json_response({"error": str(exc)}, status=404)
        if status["kind"] == "job":
            job = table.jobs[job_id]
            status["tasks"] = [rec.info() for rec in job.tasks[:JOB_TASKS_SHOWN]]
            for info in status["tasks"]:
                result = info.pop("result", None) or {}
                info["exit_code"] = result.get("exit_code")
                info["error"] = result.get("error")
        return web.json_response(status)

    async def api_cancel(self, request: web.Request) -> web.Response:
        try:
            cancelled, cancelling = self.scheduler.cancel(request.match_info["id"])
        except NotFound as exc:
            return web.json_response({"error": str(exc)}, status=404)
        return web.json_response({"cancelled": cancelled, "cancelling": cancelling})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=render(self.scheduler), headers={"Content-Type": CONTENT_TYPE})

    async def healthz(self, request: web.Request) -> web.Response:
        problems = self.scheduler.health()
        return web.json_response(
            {"ok": not problems, "problems": problems}, status=503 if problems else 200
        )
