"""``polyserve router``: the SLO-aware OpenAI-compatible proxy."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer
from pydantic import ValidationError

from polyserve.options import fail, invalid_options, setup_logging, stop_on_signals
from polyserve.policy.dispatch import DEADLINE_MISS_CHOICES
from polyserve.profile import DEFAULT_PROFILE, ProfileError, load_profile
from polyserve.router.auth import KeyRing, load_keys
from polyserve.router.settings import ConfigError, RouterSettings, load_fleet, read_key_file
from polyserve.router.spec import BackendSpec, FleetSpec, TierSpec
from polyserve.slo import PAPER_TIERS

_FLEET = "Tiers and backends"


def router(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: a free port).")] = 8080,
    fleet: Annotated[
        Path | None,
        typer.Option(help="Fleet file (YAML/JSON): tiers and backends.", rich_help_panel=_FLEET),
    ] = None,
    tier: Annotated[
        list[str] | None,
        typer.Option(
            help="A tier NAME:TPOT_MS:TTFT_MS[:reject|degrade|wait] (repeat; default: the paper's "
            "t20/t30/t50/t100 at TTFT 500 ms).",
            rich_help_panel=_FLEET,
        ),
    ] = None,
    backend: Annotated[
        list[str] | None,
        typer.Option(
            help="A backend URL[@TIER] (repeat; without @TIER it joins the idle pool).",
            rich_help_panel=_FLEET,
        ),
    ] = None,
    backend_key_file: Annotated[
        Path | None,
        typer.Option(
            help="File with the engines' API key (vLLM --api-key) for every --backend; for "
            "per-backend keys use a fleet file's api_key_env / api_key_file.",
            rich_help_panel=_FLEET,
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Model of --tier/--backend (default: the profile's).", rich_help_panel=_FLEET
        ),
    ] = None,
    profile: Annotated[
        str, typer.Option(help="Profile of --tier tiers.", rich_help_panel=_FLEET)
    ] = DEFAULT_PROFILE,
    kubernetes: Annotated[
        bool,
        typer.Option(
            help="Discover tiers (SLOTiers) and backends (their Ready pods) in --namespace.",
            rich_help_panel=_FLEET,
        ),
    ] = False,
    namespace: Annotated[
        str, typer.Option(help="Namespace for --kubernetes.", rich_help_panel=_FLEET)
    ] = "default",
    kubeconfig: Annotated[
        Path | None,
        typer.Option(
            help="Kubeconfig for --kubernetes (default: in-cluster, then ~/.kube/config).",
            rich_help_panel=_FLEET,
        ),
    ] = None,
    policy: Annotated[str, typer.Option(help="Placement policy.")] = "polyserve",
    keys: Annotated[Path | None, typer.Option(help="API key file (YAML/JSON).")] = None,
    auth: Annotated[bool, typer.Option(help="Require API keys (--no-auth for local use).")] = True,
    admin_token_file: Annotated[
        Path | None, typer.Option(help="File holding the admin API's bearer token.")
    ] = None,
    queue_limit: Annotated[int, typer.Option(help="Requests queued at most (then 429).")] = 4096,
    queue_timeout: Annotated[
        float, typer.Option(help="Seconds a request may wait for a backend (then 503).")
    ] = 300.0,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body.")] = 8 * 1024 * 1024,
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "info",
    log_json: Annotated[bool, typer.Option(help="One JSON object per log line.")] = False,
    log_prompts: Annotated[
        bool, typer.Option(help="Include prompt text in request logs (off: prompts are user data).")
    ] = False,
) -> None:
    """Route OpenAI requests to engines by SLO tier with the PolyServe policy."""
    setup_logging(log_level, log_json)
    try:
        token = admin_token_file.read_text().strip() if admin_token_file else None
        settings = RouterSettings(
            host=host,
            port=port,
            policy=policy,
            auth=auth,
            keys_file=keys,
            admin_token=token,
            queue_limit=queue_limit,
            queue_timeout_s=queue_timeout,
            max_body_bytes=max_body_bytes,
            log_prompts=log_prompts,
        )
    except ValidationError as exc:
        invalid_options(exc)
    except OSError as exc:
        fail(f"--admin-token-file: {exc.strerror or exc}")
    if kubernetes and (fleet is not None or tier or backend or backend_key_file):
        fail(
            "--kubernetes discovers tiers and backends: drop --fleet, --tier, --backend and "
            "--backend-key-file"
        )
    if backend_key_file is not None and not backend:
        fail("--backend-key-file is the key of the --backend backends: give --backend too")
    try:
        spec: FleetSpec | None = None
        backend_key = (
            read_key_file(backend_key_file, "--backend-key-file") if backend_key_file else None
        )
        if not kubernetes:
            spec = (
                load_fleet(fleet)
                if fleet is not None
                else fleet_from_flags(tier or [], backend or [], model, profile, backend_key)
            )
        ring: KeyRing | None = load_keys(keys) if keys is not None else None
        if auth and ring is None:
            fail("auth is on: give --keys FILE, or --no-auth for local use")
        kube = (namespace, kubeconfig) if kubernetes else None
        asyncio.run(_serve(settings, spec, ring, kube))  # plain loop: no precise timers needed
    except (ConfigError, ProfileError, ValueError, OSError) as exc:
        fail(str(exc))


def fleet_from_flags(
    tiers: list[str],
    backends: list[str],
    model: str | None,
    profile: str,
    backend_key: str | None = None,
) -> FleetSpec:
    model = model or load_profile(profile).model
    specs: list[TierSpec] = []
    for raw in tiers:
        parts = raw.split(":")
        if len(parts) not in (3, 4):
            raise ValueError(f"--tier {raw!r}: expected NAME:TPOT_MS:TTFT_MS[:ON_MISS]")
        miss = parts[3] if len(parts) == 4 else "reject"
        if miss not in DEADLINE_MISS_CHOICES:
            raise ValueError(
                f"--tier {raw!r}: on-miss must be one of {', '.join(DEADLINE_MISS_CHOICES)}"
            )
        try:
            tpot, ttft = float(parts[1]), float(parts[2])
        except ValueError:
            raise ValueError(f"--tier {raw!r}: TPOT and TTFT must be numbers of ms") from None
        specs.append(
            TierSpec(
                name=parts[0], model=model, tpot_ms=tpot, ttft_ms=ttft, profile=profile,
                on_deadline_miss=miss,
            )
        )  # fmt: skip
    if not specs:
        specs = [
            TierSpec(
                name=t.name, model=model, tpot_ms=t.tpot_ms, ttft_ms=t.ttft_ms, profile=profile
            )
            for t in PAPER_TIERS
        ]
    out: list[BackendSpec] = []
    for raw in backends:
        url, _, tier_name = raw.partition("@")
        url = url.rstrip("/")
        where = urlsplit(url)
        if where.scheme not in ("http", "https") or not where.netloc:
            raise ValueError(f"--backend {raw!r}: expected http://HOST:PORT[@TIER]")
        out.append(
            BackendSpec(
                name=where.netloc, url=url, model=model, tier=tier_name or None,
                api_key=backend_key,
            )
        )  # fmt: skip
    try:
        return FleetSpec(tiers=specs, backends=out)
    except ValidationError as e:
        raise ValueError("; ".join(str(err["msg"]) for err in e.errors())) from None


async def _serve(
    settings: RouterSettings,
    spec: FleetSpec | None,
    keyring: KeyRing | None,
    kube: tuple[str, Path | None] | None,
) -> None:
    from polyserve.router.server import FleetSource, Router  # aiohttp only when serving

    source: FleetSource | None = None
    if kube is not None:  # the k8s extra, only when asked for
        from polyserve.operator.discovery import kubernetes_fleet
        from polyserve.operator.handlers import api_client

        namespace, kubeconfig = kube
        source = kubernetes_fleet(namespace, api_client(kubeconfig))
        try:
            spec = await asyncio.wait_for(anext(source), 60.0)
        except TimeoutError:
            raise OSError(
                f"no answer from the Kubernetes API listing namespace {namespace!r} in 60 s"
            ) from None
    assert spec is not None
    r = Router(settings, spec, keyring, source=source)
    stop = stop_on_signals()
    await r.start()
    print(f"polyserve router listening on {r.url}", flush=True)
    try:
        await stop.wait()
    finally:
        await r.close()
