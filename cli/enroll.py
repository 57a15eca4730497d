"""`fedmed server enroll`: admit one more site to a running federation.

Registered on the `server` command group by `cli/main.py`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

def server_enroll(
    key: Annotated[Path, typer.Argument(help="The site's public key, SITE.pub (made by fedmed certs site).")],
    out: Annotated[Path, typer.Option("--out", help="Run folder of the running fedmed server start.")],
    name: Annotated[Optional[str], typer.Option("--name", help="Site name (default: the key file's name).")] = None,
) -> None:
    """Enrol a site into the federation running from --out; it can join from its next try.

    Example: fedmed server enroll site-keys/D.pub --out runs/r1
    """
    from fedmed.server.enrollment import EnrollmentError, enroll_into_running

    try:
        site, node_id = enroll_into_running(out, key, name)
    except EnrollmentError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    typer.echo(f"enrolled site {site} (node {node_id}); add its key to --sites-dir so a restart keeps it")
