"""How the CLI finds and talks to its cloud.

Lookup order: $CUMULO_CONFIG (a client.toml), else $CUMULO_URL + $CUMULO_TOKEN, else the
client.toml that `cumulo up` writes in the default state dir.
"""

from __future__ import annotations

import functools
import os
import ssl
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from cumulo.allinone.paths import StatePaths, default_state_dir


class CliError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ClientConfig:
    url: str
    token: str


def load_client_config() -> ClientConfig:
    path_env = os.environ.get("CUMULO_CONFIG")
    if path_env:
        return _from_file(Path(path_env))
    url, token = os.environ.get("CUMULO_URL"), os.environ.get("CUMULO_TOKEN")
    if url and token:
        return ClientConfig(url=url, token=token)
    default = StatePaths(default_state_dir()).client_config
    if default.exists():
        return _from_file(default)
    raise CliError(
        "no_config",
        "no cloud configured: run `cumulo up`, or set CUMULO_CONFIG "
        "(or CUMULO_URL and CUMULO_TOKEN)",
    )


def _from_file(path: Path) -> ClientConfig:
    try:
        data = tomllib.loads(path.read_text())
        return ClientConfig(url=str(data["url"]), token=str(data["token"]))
    except (OSError, tomllib.TOMLDecodeError, KeyError) as e:
        raise CliError("bad_config", f"cannot read client config {path}: {e}") from e


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """httpx's default TLS context, made once per process (loading the CA bundle takes a
    tenth of a second; tests run many commands in one process)."""
    return httpx.create_ssl_context()


def segment(value: str) -> str:
    """`value` (a name or an id the user typed) as exactly one segment of a URL path.

    Percent-encoded, '/', '%', '?' and '#' included, so that it can neither climb to another
    path nor end the path early. '', '.' and '..' cannot be one segment at all (HTTP clients
    and servers remove dot segments, an empty one is no segment), and are no name of
    anything: they are refused before any request."""
    if value in ("", ".", ".."):
        raise CliError("invalid_name", f"invalid name {value!r}: a name cannot be empty, "
                                       "'.' or '..'")
    return quote(value, safe="")


class Client:
    """The API over HTTP. A path is a template whose `{}` are filled with `names`, each one
    encoded as one path segment: `client.get("/v1/instances/{}", name)`. What a user typed
    never goes into the template itself."""

    def __init__(self, cfg: ClientConfig, project: str | None) -> None:
        self.project = project
        # Several API processes (sharing PostgreSQL): "http://a:8750,http://b:8750".
        self._apis = [
            httpx.Client(base_url=url.strip(), timeout=30.0, verify=_tls_context(),
                         headers={"Authorization": f"Bearer {cfg.token}"})
            for url in cfg.url.split(",") if url.strip()
        ]
        if not self._apis:
            raise CliError("bad_config", "the client config names no API URL")
        self._http = self._apis[0]

    def _send(self, method: str, url: str, idempotent: bool, **kw: Any) -> httpx.Response:
        """Send to the API in use; on to the next when one cannot be reached. A request that
        may have arrived (the connection broke after it was sent) is sent again only if doing
        it twice does it once: a GET, or a request with a client token (`idempotent`)."""
        for attempt, api in enumerate(self._apis):
            self._http = api
            try:
                return api.request(method, url, **kw)
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                error: httpx.TransportError = e
            except httpx.TransportError as e:
                if not (method == "GET" or idempotent) or attempt == len(self._apis) - 1:
                    raise
                error = e
        raise error

    def request(
        self,
        method: str,
        path: str,
        *names: str,
        json: Any = None,
        params: dict[str, Any] | None = None,
        scoped: bool = True,
        content: Iterator[bytes] | None = None,
        headers: dict[str, str] | None = None,
        timeout: httpx.Timeout | None = None,
        idempotent: bool = False,
    ) -> Any:
        url = path.format(*(segment(n) for n in names))
        params = {k: v for k, v in (params or {}).items() if v is not None}
        if scoped and self.project:
            params["project"] = self.project
        try:
            r = self._send(method, url, idempotent, json=json, params=params, content=content,
                           headers=headers, timeout=timeout or self._http.timeout)
        except httpx.TransportError as e:
            raise CliError(
                "unreachable", f"cannot reach the cumulo API at {self._http.base_url}: {e}"
            ) from e
        if r.status_code >= 400:
            try:
                body = r.json()
                raise CliError(
                    str(body.get("code", r.status_code)), str(body.get("detail", r.text))
                )
            except ValueError:
                raise CliError(str(r.status_code), r.text.strip() or r.reason_phrase) from None
        if r.status_code == 204:
            return None
        if r.headers.get("content-type", "").startswith("text/plain"):
            return r.text
        return r.json()

    def get(self, path: str, *names: str, **kw: Any) -> Any:
        return self.request("GET", path, *names, **kw)

    def post(self, path: str, *names: str, **kw: Any) -> Any:
        return self.request("POST", path, *names, **kw)

    def put(self, path: str, *names: str, **kw: Any) -> Any:
        return self.request("PUT", path, *names, **kw)

    def delete(self, path: str, *names: str, **kw: Any) -> Any:
        return self.request("DELETE", path, *names, **kw)
