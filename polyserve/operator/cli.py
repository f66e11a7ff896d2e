"""``polyserve operator``: run the SLOTier operator, or print / check its CRD."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

operator_app = typer.Typer(no_args_is_help=True, help="The SLOTier operator and its CRD.")


@operator_app.command("crd")
def crd(
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write the CRD here (default: stdout).")
    ] = None,
    check: Annotated[
        bool, typer.Option(help="Exit 1 if --output differs from the generated CRD.")
    ] = False,
) -> None:
    """The SLOTier CustomResourceDefinition, generated from the pydantic model."""
    from polyserve.operator.crd import crd_yaml

    text = crd_yaml()
    if output is None:
        sys.stdout.write(text)
        return
    if check:
        current = output.read_text() if output.is_file() else ""
        if current != text:
            typer.echo(f"{output} is stale: run `make crds`", err=True)
            raise typer.Exit(1)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    typer.echo(f"wrote {output}")


@operator_app.command("run")
def run(
    namespace: Annotated[
        list[str] | None,
        typer.Option(help="A namespace to watch (repeat; default: the whole cluster)."),
    ] = None,
    kubeconfig: Annotated[
        Path | None,
        typer.Option(help="Kubeconfig file (default: in-cluster, else ~/.kube/config)."),
    ] = None,
    interval: Annotated[
        float, typer.Option(help="Seconds between two passes over a tier.", min=0.1)
    ] = 10.0,
    liveness: Annotated[
        str | None,
        typer.Option(help="Serve a liveness endpoint, e.g. http://0.0.0.0:8081/healthz."),
    ] = None,
    router_url: Annotated[
        str | None,
        typer.Option(
            help="The router to read signals from (GET /polyserve/v1/state); without it, "
            "autoscaled tiers hold their replica count."
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "info",
    log_json: Annotated[bool, typer.Option(help="One JSON object per log line.")] = False,
) -> None:
    """Reconcile SLOTiers into engine Deployments and Services (kopf)."""
    import asyncio

    from polyserve.operator.handlers import OperatorConfig, run_operator
    from polyserve.options import setup_logging

    setup_logging(log_level, log_json)
    autoscaler = None
    if router_url is not None:
        from polyserve.operator.autoscaling import RouterAutoscaler, router_sources

        autoscaler = RouterAutoscaler(router_sources(router_url))
    config = OperatorConfig(
        autoscaler=autoscaler,
        interval_s=interval,
        namespaces=tuple(namespace or ()),
        kubeconfig=kubeconfig,
        liveness_endpoint=liveness,
    )
    asyncio.run(run_operator(config))  # kopf stops cleanly on SIGTERM/SIGINT
