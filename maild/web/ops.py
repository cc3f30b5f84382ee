"""/healthz and /metrics: for the operator's monitoring, not for customers.

Served beside the pages on `[http] listen`, or alone on `[http] metrics_listen`. Both
read the database in a thread; neither changes anything. Beside the pages, only a local
request sees the details (`local`): from a loopback address and without any header a
reverse proxy adds (X-Forwarded-For, Forwarded, X-Real-IP); anyone else gets the bare
status from /healthz and a 404 from /metrics.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from maild import db, health, metrics
from maild.config import HealthSettings
from maild.web.guard import is_local


def local(request: Request) -> bool:
    """Whether a request comes straight from this host (see `guard.is_local`)."""
    return is_local(request.client.host if request.client else "", dict(request.headers))


@dataclass(slots=True)
class Ops:
    runtime: health.Runtime
    factory: db.SessionFactory
    limits: HealthSettings
    clock: Callable[[], datetime]
    registry: CollectorRegistry
    public: bool  # beside the pages: details for local requests only

    async def healthz(self, request: Request) -> Response:
        head = await asyncio.to_thread(health.schema_head)  # read once, then cached
        report = await asyncio.to_thread(health.check, self.runtime, self.factory, head,
                                         self.limits, self.clock())
        body = report.body
        if self.public and not local(request):
            body = {"status": "ok" if report.healthy else "unhealthy"}
        return JSONResponse(body, status_code=200 if report.healthy else 503,
                            headers={"Cache-Control": "no-store"})

    async def metrics(self, request: Request) -> Response:
        if self.public and not local(request):
            return Response(status_code=404, headers={"Cache-Control": "no-store"})
        text = await asyncio.to_thread(metrics.exposition, self.registry)
        return Response(text, media_type=metrics.CONTENT_TYPE,
                        headers={"Cache-Control": "no-store"})


def ops_routes(runtime: health.Runtime, factory: db.SessionFactory, limits: HealthSettings,
               clock: Callable[[], datetime], *, public: bool = True) -> list[Route]:
    ops = Ops(runtime, factory, limits, clock, metrics.registry(runtime, factory, clock),
              public)
    return [Route("/healthz", ops.healthz, methods=["GET", "HEAD"]),
            Route("/metrics", ops.metrics, methods=["GET", "HEAD"])]


def make_ops_app(runtime: health.Runtime, factory: db.SessionFactory, limits: HealthSettings,
                 clock: Callable[[], datetime]) -> Starlette:
    """The app for `[http] metrics_listen`: /healthz and /metrics only."""
    return Starlette(routes=ops_routes(runtime, factory, limits, clock, public=False))
