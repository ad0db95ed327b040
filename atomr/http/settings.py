"""Settings of the HTTP front (the ``http:`` section of a node config), validated with pydantic."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from atomr.core.errors import ConfigError


class HttpSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    bind: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)  # 0: any free port (printed at start)
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    default_max_tokens: int = Field(default=128, ge=1)  # local engines and anthropic, when a request sets none
    request_timeout_s: float = Field(default=600.0, gt=0, allow_inf_nan=False)  # a finite deadline
    # POST /v1/responses keeps this many answers (oldest evicted first; 0: none kept, so no
    # previous_response_id), each for at most this long
    responses_store_max_items: int = Field(default=1000, ge=0)
    responses_store_max_age_s: float = Field(default=3600.0, gt=0, allow_inf_nan=False)
    # processes serving the front on the one port (SO_REUSEPORT; see atomr.http.workers)
    workers: int = Field(default=1, ge=1, le=64)
    # a file holding the admin key of /admin and atomr-keys (relative: to the config's folder);
    # setting one makes the front ask every caller for a key (see atomr.core.tenants)
    admin_key_file: str | None = None
    # Connection limits (`atomr.http.connection_guard`): open connections one front process serves
    # at once (one more is answered 503 and closed); a request's headers (431 beyond); how long its
    # headers and its body may take to arrive (408 and closed); how long an idle keep-alive
    # connection is kept
    max_connections: int = Field(default=1024, ge=1, le=1_000_000)
    max_header_bytes: int = Field(default=32 * 1024, ge=1024, le=16 * 1024 * 1024)
    max_headers: int = Field(default=128, ge=8, le=10_000)
    header_timeout_s: float = Field(default=10.0, gt=0, le=3600, allow_inf_nan=False)
    body_timeout_s: float = Field(default=60.0, gt=0, le=3600, allow_inf_nan=False)
    keep_alive_timeout_s: float = Field(default=5.0, gt=0, le=3600, allow_inf_nan=False)
    # with tenants (or runtime keys), the paths served without a key; every other path (/metrics,
    # /openapi.json included) asks for one
    public_paths: tuple[str, ...] = ("/health", "/healthz", "/readyz")
    # serve beyond loopback with no key asked of callers (no tenants, no admin key): anyone who
    # reaches the port spends the deployments' provider keys; refused at start unless set
    allow_unauthenticated: bool = False


def http_settings_from_config(raw: Any, where: str = "config") -> HttpSettings | None:
    """The ``http:`` section; None when there is none (no HTTP front)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: http: must be a mapping", field="http")
    try:
        return HttpSettings.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = "http." + ".".join(str(x) for x in err["loc"])
        raise ConfigError(f"{where}: {field}: {err['msg']}", field=field) from None
