"""API keys, tier entitlements and tier resolution (pure; the server turns errors into responses).

A key file (YAML or JSON; in Kubernetes, a mounted Secret) lists who may use which tiers::

    keys:
      - name: voice-agent          # shown in logs and metrics; the key itself never is
        sha256: 5e88...             # hex SHA-256 of the key (or `key:` with the key itself)
        tiers: [t20, t30]           # the tiers this key may use; omit for every tier
        default: t20                # its tier when the request names none

A request's tier, among the tiers of its model that its key may use:

1. ``x-polyserve-tier: NAME`` picks one by name (403 if the key may not use it);
2. else the llm-d headers ``x-llm-d-slo-tpot-ms`` / ``x-llm-d-slo-ttft-ms`` pick the loosest
   permitted tier whose TPOT and TTFT are at most the asked values (binning to the next tighter
   tier, as ``TierSet.bin`` does); a TTFT header tighter than the tier's also tightens the request's
   own first-token deadline;
3. else the key's default tier, else the loosest permitted tier.

A client cannot reach a tier its key does not list, whatever headers it sends. Keys are compared as
SHA-256 digests with ``hmac.compare_digest`` against every entry (no early exit), so the time taken
does not depend on how much of a key matched.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from polyserve.router.settings import read_model_file
from polyserve.router.spec import TierSpec
from polyserve.slo import bin_tier

TIER_HEADER = "x-polyserve-tier"
TPOT_HEADER = "x-llm-d-slo-tpot-ms"
TTFT_HEADER = "x-llm-d-slo-ttft-ms"


class TierChoiceError(Exception):
    """A request whose key or tier headers cannot be honoured (401, 403, 400 or 404)."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


class KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(min_length=1)]
    key: Annotated[str, Field(min_length=8)] | None = None
    sha256: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")] | None = None
    tiers: list[str] | None = None
    default: str | None = None

    @model_validator(mode="after")
    def _one_secret(self) -> KeyEntry:
        if (self.key is None) == (self.sha256 is None):
            raise ValueError(f"key {self.name!r}: give exactly one of `key` or `sha256`")
        if self.default is not None and self.tiers is not None and self.default not in self.tiers:
            raise ValueError(
                f"key {self.name!r}: default tier {self.default!r} is not in its tiers"
            )
        return self

    def digest(self) -> bytes:
        if self.sha256 is not None:
            return bytes.fromhex(self.sha256)
        assert self.key is not None
        return hashlib.sha256(self.key.encode()).digest()


class KeyFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    keys: list[KeyEntry]

    @model_validator(mode="after")
    def _unique(self) -> KeyFile:
        names = [k.name for k in self.keys]
        if len(set(names)) != len(names):
            raise ValueError("key names must be unique")
        digests = [k.digest() for k in self.keys]
        if len(set(digests)) != len(digests):
            raise ValueError("two entries hold the same key")
        return self


@dataclass(frozen=True, slots=True)
class Entitlement:
    """Who is asking and which tiers they may use (``None``: every tier)."""

    name: str
    tiers: frozenset[str] | None = None
    default: str | None = None

    def allows(self, tier: str) -> bool:
        return self.tiers is None or tier in self.tiers


ANONYMOUS = Entitlement("anonymous")


class KeyRing:
    def __init__(self, entries: Sequence[KeyEntry]) -> None:
        self._entries = [
            (
                e.digest(),
                Entitlement(e.name, None if e.tiers is None else frozenset(e.tiers), e.default),
            )
            for e in entries
        ]

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return [ent.name for _, ent in self._entries]

    def lookup(self, key: str) -> Entitlement | None:
        digest = hashlib.sha256(key.encode()).digest()
        found: Entitlement | None = None
        for d, ent in self._entries:  # every entry, whatever matched: constant time
            if hmac.compare_digest(d, digest):
                found = ent
        return found

    def authenticate(self, authorization: str | None) -> Entitlement:
        """The entitlement of an ``Authorization: Bearer KEY`` header, or a 401."""
        if not authorization:
            raise TierChoiceError(401, "Missing API key: send `Authorization: Bearer <key>`.")
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise TierChoiceError(401, "Malformed Authorization header: expected `Bearer <key>`.")
        ent = self.lookup(key.strip())
        if ent is None:
            raise TierChoiceError(401, "Invalid API key.")
        return ent


def load_keys(path: Path) -> KeyRing:
    """Read a key file; errors (ConfigError) name the file and the field."""
    return KeyRing(read_model_file(path, KeyFile, "key file").keys)


def _positive_ms(headers: Mapping[str, str], name: str) -> float | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise TierChoiceError(
            400, f"{name} must be a positive number of milliseconds, got {raw!r}."
        )
    return value


@dataclass(frozen=True, slots=True)
class TierChoice:
    tier: TierSpec
    ttft_ms: float  # the request's own first-token budget (the tier's, or tighter if asked)


def resolve_tier(
    ent: Entitlement, model: str, tiers: Sequence[TierSpec], headers: Mapping[str, str]
) -> TierChoice:
    """The tier of a request for ``model`` (whose tiers are ``tiers``), or a TierChoiceError."""
    permitted = [t for t in tiers if ent.allows(t.name)]
    if not permitted:
        raise TierChoiceError(403, f"API key {ent.name!r} may not use any tier of model {model!r}.")
    tpot = _positive_ms(headers, TPOT_HEADER)
    ttft = _positive_ms(headers, TTFT_HEADER)
    named = headers.get(TIER_HEADER)
    if named is not None:
        chosen = _by_name(ent, model, tiers, named.strip())
    elif tpot is not None or ttft is not None:
        chosen = _by_slo(ent, model, tiers, permitted, tpot, ttft)
    else:
        default = next((t for t in permitted if t.name == ent.default), None)
        chosen = default or max(permitted, key=lambda t: (t.tpot_ms, t.ttft_ms))
    budget = chosen.ttft_ms if ttft is None else min(chosen.ttft_ms, ttft)
    return TierChoice(chosen, budget)


def _by_name(ent: Entitlement, model: str, tiers: Sequence[TierSpec], name: str) -> TierSpec:
    tier = next((t for t in tiers if t.name == name), None)
    if tier is None:
        names = ", ".join(t.name for t in tiers if ent.allows(t.name))
        raise TierChoiceError(
            400, f"Unknown tier {name!r} for model {model!r}; you may use: {names}.", TIER_HEADER
        )
    if not ent.allows(tier.name):
        raise TierChoiceError(403, f"API key {ent.name!r} may not use tier {name!r}.", TIER_HEADER)
    return tier


def _by_slo(
    ent: Entitlement,
    model: str,
    tiers: Sequence[TierSpec],
    permitted: Sequence[TierSpec],
    tpot: float | None,
    ttft: float | None,
) -> TierSpec:
    chosen = bin_tier(permitted, tpot, ttft)
    if chosen is not None:
        return chosen
    asked = ", ".join(
        f"{label} {v:g} ms" for label, v in (("TPOT", tpot), ("TTFT", ttft)) if v is not None
    )
    if bin_tier(tiers, tpot, ttft) is not None:
        raise TierChoiceError(403, f"API key {ent.name!r} may not use a tier that meets {asked}.")
    raise TierChoiceError(400, f"No tier of model {model!r} meets {asked}.")
