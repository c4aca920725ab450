"""How the CLI finds and talks to its cloud.

Lookup order: $CUMULO_CONFIG (a client.toml), else $CUMULO_URL + $CUMULO_TOKEN, else the
client.toml that `cumulo up` writes in the default state dir.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


class Client:
    def __init__(self, cfg: ClientConfig, project: str | None) -> None:
        self.project = project
        self._http = httpx.Client(
            base_url=cfg.url, timeout=30.0, headers={"Authorization": f"Bearer {cfg.token}"}
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        scoped: bool = True,
    ) -> Any:
        params = dict(params or {})
        if scoped and self.project:
            params["project"] = self.project
        try:
            r = self._http.request(method, path, json=json, params=params)
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

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Any:
        return self.request("POST", path, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.request("DELETE", path, **kw)
