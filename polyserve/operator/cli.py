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
