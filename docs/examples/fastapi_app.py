"""The relay inside a FastAPI app: a login, a page, and the relay at ``/signal``.

``/static/`` serves the browser client (``sansio-signal.js``) for WebRTC pages.
The app's own session decides who may join: ``POST /login`` (a user name) sets a
``session`` cookie; a WebSocket to ``/signal`` carries that cookie, and the relay's
``authorize`` hook admits a join only under the user name of its session. The mount is
three lines::

    def may_join(scope, join):  # the app's own auth: the ASGI scope and the join
        return session_user(scope) == join.user_id

    app.mount("/signal", relay_app(authorize=may_join))

Run it with ``.venv/bin/python docs/examples/fastapi_app.py`` (``--port N``, default
8000) and open http://127.0.0.1:8000/ in two browser windows. It prints
``listening on http://HOST:PORT/`` once it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import secrets
from collections.abc import AsyncIterator
from http.cookies import SimpleCookie
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from sansio_signal import JoinRoom, Limits
from sansio_signal.adapters.asgi import relay_app

SESSIONS: dict[str, str] = {}
"""Session id (the cookie) → user name. A real app has its own session store."""


def session_user(scope: Any) -> str | None:
    """The user of the ``session`` cookie of an ASGI scope's request, or ``None``."""
    for name, value in scope.get("headers", []):
        if name == b"cookie":
            morsel = SimpleCookie(value.decode("latin-1")).get("session")
            if morsel is not None:
                return SESSIONS.get(morsel.value)
    return None


def may_join(scope: Any, join: JoinRoom) -> bool:
    """A join goes ahead only under the user name of the connection's session."""
    return session_user(scope) == join.user_id


relay = relay_app(authorize=may_join, limits=Limits(resume_grace=10.0))


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await relay.shutdown()  # a mounted app gets no lifespan events: close with 1012


app = FastAPI(lifespan=lifespan)
app.mount("/signal", relay)
# The browser client (``/static/sansio-signal.js``: SignalingClient, WebRTC peers), for
# pages of your own that want more than the chat below (follow_symlink: an editable
# install's package files are links into the checkout).
STATIC = resources.files("sansio_signal.adapters") / "static"
app.mount("/static", StaticFiles(directory=str(STATIC), follow_symlink=True))


@app.post("/login")
async def login(request: Request) -> RedirectResponse:
    """Start a session for the form's ``user`` (no password: this is an example)."""
    user = parse_qs((await request.body()).decode()).get("user", [""])[0]
    session = secrets.token_urlsafe(16)
    SESSIONS[session] = user
    response = RedirectResponse("/", status_code=303)
    response.set_cookie("session", session, httponly=True, samesite="strict")
    return response


@app.get("/", response_class=HTMLResponse)
async def page(request: Request) -> str:
    """The login form, or (logged in) a room's chat over the relay."""
    user = session_user(request.scope)
    if user is None:
        return LOGIN
    return CHAT.replace("USER", html.escape(user))


LOGIN = """<!doctype html><title>Log in</title>
<form method="post" action="/login"><input name="user" pattern="[A-Za-z0-9_.:-]{1,64}"
 placeholder="your name" required> <button>Log in</button></form>"""

CHAT = """<!doctype html><title>Chat as USER</title>
<p>USER in room <b>lobby</b></p><pre id="log"></pre>
<form id="f"><input id="t" autocomplete="off"> <button>Send</button></form>
<script>
const log = (s) => { document.getElementById("log").textContent += s + "\\n"; };
const scheme = location.protocol === "https:" ? "wss" : "ws";
const ws = new WebSocket(`${scheme}://${location.host}/signal/`);
ws.onopen = () => ws.send(JSON.stringify({channel: "webrtc-dashboard-rooms",
  type: "join-room", roomId: "lobby", userId: "USER"}));
ws.onmessage = (e) => log(e.data);
ws.onclose = (e) => log(`closed ${e.code}`);
document.getElementById("f").onsubmit = (e) => {
  e.preventDefault();
  const t = document.getElementById("t");
  ws.send(JSON.stringify({channel: "webrtc-dashboard-chat", type: "chat-message",
    text: t.value}));
  t.value = "";
};
</script>"""


async def main(host: str, port: int) -> None:
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:  # uvicorn has no event for it; serve() fails fast instead
        if serving.done():
            return await serving
        await asyncio.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    print(f"listening on http://{host}:{bound}/", flush=True)
    await serving


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port))
