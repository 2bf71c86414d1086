"""The database away (refusing connections, as while PostgreSQL restarts): intake answers 503
with Retry-After, as for a broker outage, never a 500 that a client would take as final."""

import httpx

from services import runtime
from services.app import create_app
from tests.conftest import make_settings
from tools.inbox import free_port


async def test_a_database_that_refuses_connections_gets_503_with_retry_after():
    away = f"postgresql+asyncpg://beacon@127.0.0.1:{free_port()}/beacon"  # nothing listens
    rt = runtime.build(make_settings("127.0.0.1:1", away), frozenset({"intake"}))
    transport = httpx.ASGITransport(app=create_app(rt), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://intake") as api:
        token = {"Authorization": "Bearer any"}  # looking it up is the first database call
        answers = [await api.get("/api/v1/cases/C-0123456789", headers=token),
                   await api.get("/api/v1/cases", headers=token),
                   await api.post("/api/v1/reports", headers=token, json={})]
        link = await api.get("/a/C-0123456789.view.x.y")  # an officer's signed link
    await rt.db.dispose()
    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert answer.headers["Retry-After"] == "5"
        assert "database" in answer.json()["detail"]
    # The signed link's page is read in a browser: a page that says to try again, not JSON.
    assert link.status_code == 503 and link.headers["Retry-After"] == "5"
    assert link.headers["content-type"].startswith("text/html") and "try again" in link.text
