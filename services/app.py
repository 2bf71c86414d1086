"""The HTTP face of a Beacon process: health and metrics always; the API where intake runs."""

from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from services import runtime as runtime_mod
from services.common.db import database_fault
from services.intake.api.deps import Answered, audit_refused_body
from services.intake.api.links import page as link_page
from services.intake.submission import RETRY_AFTER_S

log = structlog.get_logger("beacon.http")


class BodyLimit:
    """413 for a body over the limit, counted as it streams (a missing Content-Length too)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _too_large(send, self.max_bytes)
        seen, over, started = 0, False, False

        async def limited():
            nonlocal seen, over
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                over = True
                raise _TooLarge
            return message

        async def sending(message):
            nonlocal started
            if over and not started:
                return  # FastAPI's 400 for the body it could not read: the 413 goes instead
            started = True
            await send(message)

        try:
            await self.app(scope, limited, sending)
        except _TooLarge:
            pass
        if over and not started:
            await _too_large(send, self.max_bytes)


class _TooLarge(Exception):
    pass


async def _too_large(send, limit: int) -> None:
    await JSONResponse({"detail": f"request body over {limit} bytes"}, 413)(
        {"type": "http"}, None, send)


def create_app(rt) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await runtime_mod.start(rt)
        try:
            yield
        finally:
            await runtime_mod.stop(rt)

    app = FastAPI(
        title="Beacon", version="1", lifespan=lifespan,
        description="Child-protection incident alert and escalation. Every call but health "
                    "needs a bearer token; messages and events carry IDs and codes only.",
    )
    app.state.runtime = rt

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        log.exception("unhandled", path=request.url.path)
        return JSONResponse({"detail": "internal error; it has been logged"}, 500)

    async def database_away(request: Request, exc: Exception):
        """The database refusing, restarting or out of connections is no fault of the request:
        503 and when to retry, as for the broker, and one log line, not a traceback each."""
        if not database_fault(exc):
            return await internal(request, exc)
        log.warning("database_unavailable", path=request.url.path, error=type(exc).__name__)
        if request.url.path.startswith("/a/"):  # an officer's browser, on a signed link's page
            return link_page("Try again shortly / Vui lòng thử lại sau",
                             "<p>Beacon cannot open this case right now. Please try again in a "
                             "minute. / Hệ thống tạm thời chưa mở được vụ việc, vui lòng thử lại "
                             "sau ít phút.</p>", 503, {"Retry-After": RETRY_AFTER_S})
        return JSONResponse({"detail": "the database is unavailable; try again"}, 503,
                            headers={"Retry-After": RETRY_AFTER_S})

    # Handled here rather than by the catch-all, which Starlette re-raises after answering.
    for away in (SQLAlchemyError, OSError):
        app.add_exception_handler(away, database_away)

    @app.exception_handler(Answered)
    async def answered(request: Request, exc: Answered):
        return JSONResponse(exc.answer, 202)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        # FastAPI's own 422, less each error's "input": a child's name or a reporter's phone
        # number that fails validation would come back in the body, and bodies end up in the
        # logs of proxies and clients. Which field and what is wrong are enough.
        await audit_refused_body(request, exc.errors())
        return JSONResponse({"detail": jsonable_encoder(
            [{k: v for k, v in error.items() if k != "input"} for error in exc.errors()])}, 422)

    @app.get("/healthz", tags=["health"])
    async def healthz():
        return {"status": "ok", "services": sorted(rt.services)}

    @app.get("/readyz", tags=["health"])
    async def readyz():
        problems = []
        try:
            async with rt.db.reads() as session:
                await session.execute(text("SELECT 1"))
        except Exception as exc:
            problems.append(f"database: {type(exc).__name__}")
        if not await rt.broker.ping(timeout=2):
            problems.append("kafka: no answer")
        if problems:
            return JSONResponse({"status": "unavailable", "problems": problems}, 503)
        return {"status": "ready"}

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse)
    async def metrics():
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    if "intake" in rt.services:
        from services.intake.api import (
            audit, authorities, cases, directory, identity, links, overrides, reports,
            rulepacks, subjects,
        )

        app.include_router(reports.router)
        app.include_router(cases.router)
        app.include_router(identity.router)
        app.include_router(subjects.router)
        app.include_router(overrides.router)
        app.include_router(authorities.router)
        app.include_router(links.router)
        app.include_router(rulepacks.router)
        app.include_router(directory.router)
        app.include_router(audit.router)
    app.add_middleware(BodyLimit, max_bytes=rt.settings.max_body_bytes)
    return app
