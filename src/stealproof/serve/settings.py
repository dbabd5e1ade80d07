"""Gateway settings: a YAML file validated by pydantic-settings, overridable by environment.

Every field can also be set as ``STEALPROOF_<FIELD>`` (nested fields with ``__``, e.g.
``STEALPROOF_DATABASE_URL``, ``STEALPROOF_MAX_ROWS_PER_REQUEST``); the environment wins over the
file. Relative paths in the file are relative to the file's directory. Nothing is built at import
time: :func:`load_settings` reads a file, :class:`ServeSettings` can also be built in code.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from stealproof.errors import ConfigError

#: Placeholder secrets a deployment must not run with.
PLACEHOLDER_KEYS = frozenset({"changeme", "change-me", "secret", "admin", "password", "test"})
MIN_ADMIN_KEY_LENGTH = 32
#: The largest row quota: 10**15 rows. Counters are 64-bit in the database, and a bound well
#: below 2**53 reads the same to clients that parse JSON numbers as doubles (OpenAPI schema).
MAX_QUOTA_ROWS = 10**15

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class DetectorSettings(BaseModel):
    """One detector of a model's policy: ``prada`` (parameters) or ``guardian`` (a bundle)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["prada", "guardian"]
    params: dict[str, Any] = Field(default_factory=dict, description="detector parameters")
    bundle: Path | None = Field(None, description="guardian: the bundle `guardian train` wrote")


class PolicySettings(BaseModel):
    """Detectors → deceptive answers for flagged rows → block (see stealproof.policy)."""

    model_config = ConfigDict(extra="forbid")

    detectors: list[DetectorSettings] = Field(default_factory=list)
    max_flagged: int | None = Field(1000, ge=1, description="block after this many flagged rows")
    window: int | None = Field(None, ge=1, description="rows in the sliding window rule")
    ratio: float | None = Field(None, gt=0, le=1, description="block at this flagged share")
    deceptive: str = Field("deceptive", description="defense for flagged rows")


class ModelSettings(BaseModel):
    """One served model: checkpoint, defense and policy, output mode."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_NAME, description="the name clients use in /v2/models/{name}")
    version: str = Field("1", pattern=_NAME)
    checkpoint: Path = Field(description="a checkpoint `stealproof train-victim` wrote")
    defense: str = Field("none", description="registered defense name (`stealproof list`)")
    params: dict[str, Any] = Field(default_factory=dict, description="defense parameters")
    models_dir: Path | None = Field(
        None, description="what `stealproof prepare-defense` wrote (mad, grad2, am)"
    )
    output: Literal["probs", "topk", "label"] = "probs"
    top_k: int = Field(1, ge=1)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    seed: int = Field(0, ge=0, description="seed of the defense's randomness")


class BatchingSettings(BaseModel):
    """Dynamic batching and group commit of concurrent requests (see stealproof.serve.pipeline)."""

    model_config = ConfigDict(extra="forbid")

    max_wait_ms: float = Field(
        2.0,
        ge=0,
        le=100,
        description="how long a turn waits for requests still being received (never when none is)",
    )
    max_rows: int = Field(64, ge=1, le=65536, description="rows per turn at most (1: no batching)")


class StateSettings(BaseModel):
    """How client policy states are kept (see stealproof.serve.client_states)."""

    model_config = ConfigDict(extra="forbid")

    checkpoint_rows: int = Field(
        1024,
        ge=1,
        le=2**20,
        description="journal rows of a client after which its whole state is written again",
    )
    cache_clients: int = Field(
        256, ge=1, le=2**20, description="clients per model whose state a worker keeps in memory"
    )


class ServeSettings(BaseSettings):
    """Everything ``stealproof serve`` needs (see the module doc for the environment)."""

    model_config = SettingsConfigDict(
        env_prefix="STEALPROOF_",
        env_nested_delimiter="__",
        extra="forbid",
        allow_inf_nan=False,
    )

    models: list[ModelSettings] = Field(min_length=1)
    max_rows_per_request: int = Field(256, ge=1, le=65536)
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    state: StateSettings = Field(default_factory=StateSettings)
    max_body_bytes: int = Field(16 * 2**20, ge=1024)
    quota_rows: int | None = Field(
        None,
        ge=0,
        le=MAX_QUOTA_ROWS,
        description="rows a new client may query in all (None: no quota)",
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy URL (default: SQLite stealproof.db next to the config)"
    )
    auth_cache_seconds: float = Field(
        5.0,
        ge=0,
        le=3600,
        description="a prediction reuses an API key check this recent (0: check every time); "
        "block, quota and revocation are checked again when the request is decided",
    )
    sqlite_synchronous: Literal["normal", "full"] = Field(
        "normal",
        description="SQLite only: 'normal' survives a killed process, 'full' also a power loss "
        "(syncs every commit; slower)",
    )
    postgres_synchronous_commit: Literal["off", "server"] = Field(
        "off",
        description="PostgreSQL only: 'off' — the gateway's commits do not wait for the WAL "
        "flush: they survive a killed gateway process, the last ones (under a second) may be "
        "lost if the database server or its machine crashes; 'server' — the server's own "
        "synchronous_commit (PostgreSQL's default 'on' waits for the flush; slower)",
    )
    admin_key_env: str = Field(
        "STEALPROOF_ADMIN_KEY", description="environment variable holding the admin key"
    )
    admin_key_file: Path | None = Field(None, description="file holding the admin key")
    config_dir: Path = Field(Path("."), description="where relative paths start")

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelSettings]) -> list[ModelSettings]:
        seen: set[tuple[str, str]] = set()
        for m in models:
            if (m.name, m.version) in seen:
                raise ValueError(f"model {m.name!r} version {m.version!r} is listed twice")
            seen.add((m.name, m.version))
        return models

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # the environment overrides the file (passed as init arguments)
        return (env_settings, init_settings)

    def path(self, p: Path) -> Path:
        """``p`` resolved against the config's directory."""
        return p if p.is_absolute() else (self.config_dir / p)

    def resolved_database_url(self) -> str:
        """The database URL; the default is a SQLite file next to the config."""
        if self.database_url:
            url = self.database_url
            if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
                rel = url.removeprefix("sqlite:///")
                if rel and rel != ":memory:":
                    return "sqlite:///" + str(self.path(Path(rel)).resolve())
            return url
        return "sqlite:///" + str((self.config_dir / "stealproof.db").resolve())

    def admin_key(self) -> SecretStr | None:
        """The admin key from the file or the environment (``None``: admin API disabled).

        A key shorter than 32 characters or a placeholder is refused: the admin API creates keys
        and unblocks clients.
        """
        value: str | None = None
        where = ""
        if self.admin_key_file is not None:
            p = self.path(self.admin_key_file)
            try:
                value = p.read_text(encoding="utf-8").strip()
            except OSError as e:
                raise ConfigError(f"admin_key_file: cannot read {p} ({e.strerror})") from None
            where = f"admin_key_file {p}"
        elif os.environ.get(self.admin_key_env):
            value = os.environ[self.admin_key_env].strip()
            where = f"environment variable {self.admin_key_env}"
        if value is None:
            return None
        if value.lower() in PLACEHOLDER_KEYS or len(value) < MIN_ADMIN_KEY_LENGTH:
            raise ConfigError(
                f"admin key from {where}: use a random key of at least {MIN_ADMIN_KEY_LENGTH} "
                "characters (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
        return SecretStr(value)


def _validation_line(source: str, err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in e["loc"])
        loc = loc.replace(".[", "[")
        msg = str(e["msg"]).removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        got = e.get("input")
        shown = (
            f" (got {got!r})"
            if e["type"] not in ("missing", "extra_forbidden") and not isinstance(got, dict | list)
            else ""
        )
        parts.append(f"{loc or '<config>'}: {msg}{shown}")
    return f"{source}: " + "; ".join(parts)


def settings_from_data(data: Any, *, source: str, config_dir: Path) -> ServeSettings:
    """Validate plain data (a parsed YAML document) into settings; one-line ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with a `models` list at the top")
    try:
        return ServeSettings(**{**data, "config_dir": config_dir})
    except ValidationError as e:
        raise ConfigError(_validation_line(source, e)) from None


def load_settings(path: str | Path) -> ServeSettings:
    """Read and validate a gateway YAML file (the environment overrides its fields)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"--config: cannot read {p} ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{p}: not valid YAML{where}") from None
    return settings_from_data(data, source=str(p), config_dir=p.resolve().parent)


def safe_name(text: str) -> bool:
    """Whether ``text`` is a valid model or client name."""
    return re.match(_NAME, text) is not None
