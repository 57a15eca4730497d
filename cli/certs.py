"""`fedmed certs`: the federation's CA and server certificate, and sites' keys."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

certs_app = typer.Typer(
    help="Key material: the federation CA (coordinator) and SuperNode keys (sites).\n\n"
    "Example: fedmed certs init --out certs --server-name fl.example.org",
    no_args_is_help=True,
)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@certs_app.command("init")
def certs_init(
    out: Annotated[Path, typer.Option("--out", help="Folder for ca.crt, ca.key, server.crt, server.key.")],
    server_name: Annotated[str, typer.Option("--server-name", help="Host name (or IP) the sites connect to.")],
    server_ip: Annotated[Optional[list[str]], typer.Option("--server-ip", help="Extra IP address for the certificate (repeatable).")] = None,
) -> None:
    """Make the federation's CA and the coordinator's TLS certificate (run at the coordinator).

    Example: fedmed certs init --out certs --server-name fl.example.org --server-ip 10.0.0.5
    """
    from fedmed.common.certs import CA_KEY, CertError, init_federation

    try:
        paths = init_federation(out, server_name, tuple(server_ip or ()))
    except CertError as exc:
        _fail(str(exc))
    typer.echo(f"wrote {paths.ca_cert}, {paths.cert}, {paths.key} and {out / CA_KEY}")
    typer.echo(f"give each site {paths.ca_cert}; keep {out / CA_KEY} offline "
               "(only needed to issue a new server certificate)")


@certs_app.command("site")
def certs_site(
    site: Annotated[str, typer.Argument(help="The site's name, as it will join (fedmed client --site).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for SITE.key (stays here) and SITE.pub (goes to the coordinator).")],
    ca: Annotated[Optional[Path], typer.Option("--ca", help="The federation's ca.crt, copied into --out.")] = None,
) -> None:
    """Make this site's SuperNode key pair (run at the site).

    Example: fedmed certs site A --out site-certs --ca ca.crt
    """
    from fedmed.common.certs import CertError, make_site_keys

    try:
        private, public = make_site_keys(site, out, ca)
    except CertError as exc:
        _fail(str(exc))
    typer.echo(f"wrote {private} (private: never leaves this site) and {public}")
    typer.echo(f"send {public} to the coordinator to be enrolled (fedmed server start --sites-dir)")
