#!/usr/bin/env python3
"""Make a private certificate authority and TLS certificates for a Dask cluster.

Usage::

    python cluster/tls/make_certs.py certs/                 # ca.pem, scheduler, worker, client
    python cluster/tls/make_certs.py certs/ --host head.example.org --days 90

Writes ``ca.pem`` (give it to every process), ``ca-key.pem`` (keep it offline: whoever has it
can mint certificates the cluster accepts) and ``<name>.pem`` / ``<name>-key.pem`` for each
``--name`` (default: scheduler, worker, client). Every certificate is signed by the CA and
valid for server and client authentication, since Dask processes are both. Dask's TLS
checks the chain, not host names, so ``--host`` only adds subject alternative names for
other tools. Needs the ``cryptography`` package (``pip install cryptography``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from pathlib import Path


def _write(path: Path, data: bytes, private: bool = False) -> None:
    # keys are created 0600 from the start, never world-readable for a moment
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def make_certs(out: Path, names: list[str], hosts: list[str], days: int) -> list[Path]:
    """Write the CA and one certificate per name into ``out``; returns the files written."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)  # tolerate clock skew
    until = now + dt.timedelta(days=days)

    def pem_key(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mimflow dask CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(until)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                       crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False,
                                       decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    written = [out / "ca.pem", out / "ca-key.pem"]
    _write(written[0], ca.public_bytes(serialization.Encoding.PEM))
    _write(written[1], pem_key(ca_key), private=True)

    sans: list[x509.GeneralName] = []
    for host in ["localhost", "127.0.0.1", *hosts]:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    for name in names:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(ca_name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(until)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                               critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .sign(ca_key, hashes.SHA256()))
        _write(out / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM))
        _write(out / f"{name}-key.pem", pem_key(key), private=True)
        written += [out / f"{name}.pem", out / f"{name}-key.pem"]
    return written


def main(argv: list[str] | None = None) -> int:
    """Command line of this script; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for the PEM files")
    parser.add_argument("--name", action="append", dest="names",
                        help="certificate to make (repeatable; default scheduler, worker, "
                             "client)")
    parser.add_argument("--host", action="append", default=[],
                        help="extra DNS name or IP address for the certificates")
    parser.add_argument("--days", type=int, default=365, help="validity (default 365)")
    args = parser.parse_args(argv)
    files = make_certs(args.out, args.names or ["scheduler", "worker", "client"], args.host,
                       args.days)
    for path in files:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
