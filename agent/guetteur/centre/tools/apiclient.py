"""The centre server's API from the command line: how ``centre live``, ``centre ptz``,
``centre snapshot`` and ``centre export`` reach the gateways — through the server, as a logged-in
operator (or with an API token an admin issued for a script), never by publishing on the broker.

Flags every such tool shares: ``-s/--server URL`` (default ``$GUETTEUR_SERVER`` or
http://127.0.0.1:8080), ``-u/--user NAME`` (default ``$GUETTEUR_USER`` or ``$USER``) with the
password from ``$GUETTEUR_PASSWORD`` or asked on the terminal, or ``--token-file FILE`` /
``$GUETTEUR_TOKEN`` for an API token; ``-g/--gateway``.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp

DEFAULT_SERVER = "http://127.0.0.1:8080"


class ApiFailure(RuntimeError):
    """The server refused, or could not be reached: a code and its sentence."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} [{code}]")
        self.status = status
        self.code = code
        self.message = message


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-s",
        "--server",
        default=os.environ.get("GUETTEUR_SERVER", DEFAULT_SERVER),
        help="centre server URL (default $GUETTEUR_SERVER or %(default)s)",
    )
    parser.add_argument(
        "-u",
        "--user",
        default=os.environ.get("GUETTEUR_USER") or os.environ.get("USER"),
        help="operator account (default $GUETTEUR_USER or $USER); password from "
        "$GUETTEUR_PASSWORD or asked",
    )
    parser.add_argument(
        "--token-file",
        help="file holding an API token an admin issued (guetteur centre user token); "
        "or set $GUETTEUR_TOKEN",
    )


def add_gateway_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-g", "--gateway", required=True, help="gateway id")


class ApiClient:
    """An aiohttp session on the server, authenticated by a bearer token."""

    def __init__(self, server: str, token: str | None = None) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ApiClient:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120)
        )
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use `async with ApiClient(...)`"
        return self._session

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def login(self, user: str, password: str) -> dict[str, Any]:
        data = await self.request("POST", "/api/login", {"username": user, "password": password})
        self.token = str(data["token"])
        return data

    async def request(
        self, method: str, path: str, body: dict[str, Any] | None = None, **params: Any
    ) -> dict[str, Any]:
        query = {k: str(v) for k, v in params.items() if v is not None}
        try:
            async with self.session.request(
                method, self.server + path, json=body, params=query, headers=self._headers()
            ) as resp:
                try:
                    data = await resp.json(content_type=None)
                except ValueError:
                    raise ApiFailure(resp.status, "bad_response", await resp.text()) from None
        except aiohttp.ClientError as exc:
            raise ApiFailure(0, "unreachable", f"cannot reach {self.server}: {exc}") from None
        if not isinstance(data, dict):
            raise ApiFailure(resp.status, "bad_response", "the server did not answer a JSON object")
        if not data.get("ok"):
            err = data.get("error") or {}
            raise ApiFailure(resp.status, str(err.get("code")), str(err.get("message")))
        return data

    async def download(self, path: str, **params: Any) -> bytes:
        query = {k: str(v) for k, v in params.items() if v is not None}
        try:
            async with self.session.get(
                self.server + path, params=query, headers=self._headers()
            ) as resp:
                if resp.status != 200:
                    try:
                        err = (await resp.json(content_type=None)).get("error") or {}
                    except ValueError:
                        err = {}
                    raise ApiFailure(resp.status, str(err.get("code", resp.status)),
                                     str(err.get("message", resp.reason)))  # fmt: skip
                return await resp.read()
        except aiohttp.ClientError as exc:
            raise ApiFailure(0, "unreachable", f"cannot reach {self.server}: {exc}") from None

    def websocket(self, path: str) -> Any:
        ws_url = "ws" + self.server[4:] + path  # http→ws, https→wss
        return self.session.ws_connect(ws_url, headers=self._headers(), heartbeat=20)


async def connect(args: argparse.Namespace) -> ApiClient:
    """A logged-in client for the flags of ``add_server_arguments`` (enter it with
    ``async with``). Raises ApiFailure."""
    token = os.environ.get("GUETTEUR_TOKEN")
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as exc:
            raise ApiFailure(
                0, "bad_token_file", f"cannot read {args.token_file}: {exc.strerror}"
            ) from None
    client = ApiClient(args.server, token)
    await client.__aenter__()
    if token:
        return client
    if not args.user:
        await client.__aexit__()
        raise ApiFailure(0, "no_user", "no account given: -u NAME, or --token-file")
    password = os.environ.get("GUETTEUR_PASSWORD")
    if password is None:
        if not sys.stdin.isatty():
            await client.__aexit__()
            raise ApiFailure(0, "no_password", "set $GUETTEUR_PASSWORD or run on a terminal")
        password = getpass.getpass(f"mot de passe / password for {args.user}: ")
    try:
        await client.login(args.user, password)
    except ApiFailure:
        await client.__aexit__()
        raise
    return client
