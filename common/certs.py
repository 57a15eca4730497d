"""Key material for a federation: a private CA, the coordinator's TLS certificate, and
each site's SuperNode authentication key pair.

Who makes what, and where it stays:

- the coordinator runs `fedmed certs init`: `ca.crt` + `ca.key` (the federation's CA),
  `server.crt` + `server.key` (the coordinator's TLS identity, signed by the CA). Only
  `ca.crt` ever leaves the coordinator; `ca.key` is needed again only to issue a new
  server certificate and is best kept offline.
- each site runs `fedmed certs site NAME` on its own machine: `NAME.key` (private, never
  leaves the site) and `NAME.pub`, which the site sends to the coordinator to be
  enrolled; with `--ca` the CA certificate is copied next to them, so the folder is
  everything `fedmed client --certs` needs.

The coordinator's certificate always also names `localhost` and `127.0.0.1`: the
SuperLink listens on loopback behind fedmed's public-port proxy, and the proxy and the
coordinator's own `flwr` commands check its certificate there. Private keys are written
with mode 0600.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.crt"
SERVER_KEY = "server.key"
LOOPBACK_NAMES = ("localhost", "127.0.0.1")
CA_DAYS = 3650
SERVER_DAYS = 825


class CertError(ValueError):
    """Key material cannot be made or used as asked; the message says what to do."""


@dataclass(frozen=True)
class ServerMaterial:
    """What `fedmed server start --certs DIR` reads."""

    ca_cert: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class SiteMaterial:
    """What `fedmed client --certs DIR` reads."""

    ca_cert: Path
    private_key: Path


def _write_private(path: Path, data: bytes) -> None:
    """Create the file 0600 from the start: never world-readable, not even briefly."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _refuse_overwrite(paths: list[Path], flag: str) -> None:
    existing = [p for p in paths if p.exists()]
    if existing:
        raise CertError(f"{flag} {existing[0].parent}: already holds {existing[0].name}; "
                        "choose an empty folder (existing keys are never overwritten)")


def init_federation(out: Path, server_name: str, server_ips: tuple[str, ...] = ()) -> ServerMaterial:
    """Make the federation's CA and the coordinator's certificate in `out`."""
    if not server_name or any(c.isspace() for c in server_name):
        raise CertError(f"--server-name {server_name!r}: expected the host name or IP the sites "
                        "will connect to, e.g. fl.hospital-a.example")
    for ip in server_ips:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise CertError(f"--server-ip {ip!r}: not an IP address, e.g. 10.0.0.5") from None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = ServerMaterial(out / CA_CERT, out / SERVER_CERT, out / SERVER_KEY)
    _refuse_overwrite([out / CA_KEY, paths.ca_cert, paths.cert, paths.key], "--out")
    now = datetime.datetime.now(datetime.timezone.utc)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"fedmed federation CA ({server_name})")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    names = list(dict.fromkeys([server_name, *server_ips, *LOOPBACK_NAMES]))
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server_name)]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA384())
    )

    _write_private(out / CA_KEY, _pem_key(ca_key))
    _write_private(paths.key, _pem_key(server_key))
    paths.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths.cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    return paths


def make_site_keys(site: str, out: Path, ca_cert: Path | None = None) -> tuple[Path, Path]:
    """Make site `site`'s SuperNode key pair (OpenSSH format) in `out`; copy the CA cert
    there when given. Returns (private key, public key)."""
    if not site or not site.replace("-", "").replace("_", "").isalnum():
        raise CertError(f"site name {site!r}: expected letters, digits, '-' or '_'")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    private, public = out / f"{site}.key", out / f"{site}.pub"
    _refuse_overwrite([private, public], "--out")
    if ca_cert is not None:
        load_ca(ca_cert, "--ca")
    key = ec.generate_private_key(ec.SECP384R1())
    _write_private(private, key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.OpenSSH,
                                              serialization.NoEncryption()))
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH)
    public.write_bytes(line + f" fedmed-site-{site}\n".encode())
    if ca_cert is not None and Path(ca_cert).resolve() != (out / CA_CERT).resolve():
        shutil.copyfile(ca_cert, out / CA_CERT)
    return private, public


def load_ca(path: Path, flag: str) -> x509.Certificate:
    try:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except FileNotFoundError:
        raise CertError(f"{flag} {path}: no such file; copy the federation's ca.crt here") from None
    except ValueError:
        raise CertError(f"{flag} {path}: not a PEM certificate; expected the federation's ca.crt") from None
    return cert


def load_site_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """A site's enrolment key: an OpenSSH EC public key, as `fedmed certs site` writes."""
    try:
        key = serialization.load_ssh_public_key(Path(path).read_bytes())
    except FileNotFoundError:
        raise CertError(f"{path}: no such file") from None
    except Exception:  # noqa: BLE001 — cryptography raises several kinds for a bad key
        raise CertError(f"{path}: not an OpenSSH public key; make one with `fedmed certs site NAME`") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise CertError(f"{path}: not an EC key; Flower authenticates SuperNodes with EC (NIST "
                        "curve) keys, make one with `fedmed certs site NAME`")
    return key


def key_fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """SHA-256 of the key's OpenSSH encoding: how the audit log names a key."""
    blob = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return hashlib.sha256(blob.split()[1]).hexdigest()


def server_material(certs: Path) -> ServerMaterial:
    """The coordinator's files in `--certs DIR`, checked to exist."""
    paths = ServerMaterial(Path(certs) / CA_CERT, Path(certs) / SERVER_CERT, Path(certs) / SERVER_KEY)
    for path in (paths.ca_cert, paths.cert, paths.key):
        if not path.is_file():
            raise CertError(f"--certs {certs}: {path.name} missing; make the folder with "
                            "`fedmed certs init --out DIR --server-name NAME`")
    load_ca(paths.ca_cert, "--certs")
    # The server key lets its holder pose as the coordinator; the CA key, if it is kept
    # here at all, lets its holder mint a new coordinator certificate.
    for key in (paths.key, Path(certs) / CA_KEY):
        if key.is_file() and key.stat().st_mode & 0o077:
            raise CertError(f"--certs {certs}: {key.name} is readable by other users; run `chmod 600 {key}`")
    return paths


def site_material(certs: Path, site: str) -> SiteMaterial:
    """A site's files in `--certs DIR`: `ca.crt` and `<site>.key`."""
    paths = SiteMaterial(Path(certs) / CA_CERT, Path(certs) / f"{site}.key")
    if not paths.ca_cert.is_file():
        raise CertError(f"--certs {certs}: ca.crt missing; copy the federation's CA certificate "
                        "there (or make the folder with `fedmed certs site NAME --ca ca.crt`)")
    if not paths.private_key.is_file():
        raise CertError(f"--certs {certs}: {site}.key missing; make it with "
                        f"`fedmed certs site {site} --out {certs}`")
    load_ca(paths.ca_cert, "--certs")
    if paths.private_key.stat().st_mode & 0o077:
        raise CertError(f"--certs {certs}: {site}.key is readable by other users; "
                        f"run `chmod 600 {paths.private_key}`")
    return paths
