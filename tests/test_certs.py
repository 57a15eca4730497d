"""Key material: what `fedmed certs init` / `fedmed certs site` write, and how it is read."""

from __future__ import annotations

import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from fedmed.common.certs import (CertError, init_federation, key_fingerprint, load_site_public_key,
                                 make_site_keys, server_material, site_material)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_makes_a_ca_and_a_server_certificate_for_the_given_names(tmp_path):
    paths = init_federation(tmp_path / "certs", "fl.example.org", ("10.0.0.5",))
    assert _mode(paths.key) == 0o600 and _mode(tmp_path / "certs" / "ca.key") == 0o600
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    assert cert.issuer == ca.subject
    ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"fl.example.org", "localhost"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address("10.0.0.5"),
                                                            ipaddress.ip_address("127.0.0.1")}
    assert server_material(tmp_path / "certs") == paths


def test_init_never_overwrites_and_names_bad_input(tmp_path):
    init_federation(tmp_path / "certs", "fl.example.org")
    with pytest.raises(CertError, match="--out .*already holds"):
        init_federation(tmp_path / "certs", "fl.example.org")
    with pytest.raises(CertError, match="--server-ip 'nope'"):
        init_federation(tmp_path / "other", "fl.example.org", ("nope",))
    with pytest.raises(CertError, match="--server-name"):
        init_federation(tmp_path / "other", "")


def test_site_keys_are_openssh_ec_keys_flower_accepts(tmp_path):
    init_federation(tmp_path / "co", "localhost")
    private, public = make_site_keys("A", tmp_path / "site", tmp_path / "co" / "ca.crt")
    assert _mode(private) == 0o600
    key = load_ssh_private_key(private.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert isinstance(load_ssh_public_key(public.read_bytes()), ec.EllipticCurvePublicKey)
    assert key_fingerprint(load_site_public_key(public)) == key_fingerprint(key.public_key())
    material = site_material(tmp_path / "site", "A")
    assert material.ca_cert.read_bytes() == (tmp_path / "co" / "ca.crt").read_bytes()
    with pytest.raises(CertError, match="already holds A.key"):
        make_site_keys("A", tmp_path / "site")


def test_site_material_explains_what_is_missing(tmp_path):
    make_site_keys("A", tmp_path / "site")
    with pytest.raises(CertError, match="ca.crt missing"):
        site_material(tmp_path / "site", "A")
    init_federation(tmp_path / "co", "localhost")
    (tmp_path / "site" / "ca.crt").write_bytes((tmp_path / "co" / "ca.crt").read_bytes())
    with pytest.raises(CertError, match="B.key missing"):
        site_material(tmp_path / "site", "B")
    (tmp_path / "site" / "A.key").chmod(0o644)
    with pytest.raises(CertError, match="chmod 600"):
        site_material(tmp_path / "site", "A")
    with pytest.raises(CertError, match="server.crt missing"):
        server_material(tmp_path / "site")


@pytest.mark.parametrize("key", ["server.key", "ca.key"])
def test_the_coordinator_refuses_keys_others_can_read(tmp_path, key):
    init_federation(tmp_path / "certs", "localhost")
    server_material(tmp_path / "certs")
    (tmp_path / "certs" / key).chmod(0o644)
    with pytest.raises(CertError, match=f"{key} is readable by other users; run `chmod 600"):
        server_material(tmp_path / "certs")
