"""TLS material for a federation and SuperNode authentication keys, made with `cryptography`.

Why our own script instead of openssl one-liners: hospital IT can read 80 lines of Python and
see exactly what is made — a private CA (10 years), a SuperLink server certificate signed by
it with the coordinator's DNS names / IPs as subject alternative names (2 years). Private keys
are written 0600. SuperNode keys are not made here: each site makes its own
(:mod:`shared.flower_keys`), so no site's private key ever exists at the coordinator.

Nothing here contacts anything; ``deploy/make_certs.py`` is the command-line wrapper.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.signing import _write_private


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def make_ca_and_server(out: Path, names: Sequence[str] = ("localhost", "127.0.0.1"),
                       ca_days: int = 3650, server_days: int = 730) -> dict[str, Path]:
    """``out/ca.crt``, ``out/ca.key``, ``out/server.pem``, ``out/server.key``.

    ``names`` are the addresses SuperNodes use to reach the SuperLink (DNS names and IPs);
    each becomes a subject alternative name, which TLS clients check. ``localhost`` and
    ``127.0.0.1`` are always added: the SuperLink itself listens on loopback behind the Fleet
    proxy, and the proxy, the SuperExec and the operator's ``flwr`` verify it by those names.
    """
    out.mkdir(parents=True, exist_ok=True)
    names = list(dict.fromkeys([*names, "localhost", "127.0.0.1"]))
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "synthlearn federation CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=ca_days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                       crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False,
                                       decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA384()))
    key = ec.generate_private_key(ec.SECP384R1())
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=server_days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA384()))
    paths = {"ca_cert": out / "ca.crt", "ca_key": out / "ca.key",
             "server_cert": out / "server.pem", "server_key": out / "server.key"}
    paths["ca_cert"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    _write_private(paths["ca_key"], _pem_key(ca_key))
    paths["server_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(paths["server_key"], _pem_key(key))
    return paths
