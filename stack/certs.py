"""Certificates for the stack's secured Kafka broker, made with openssl and keytool.

A certificate authority of the stack's own signs the broker's certificate (for 127.0.0.1)
and a client certificate for mutual TLS. The broker gets them as PKCS12 stores, which the
JVM reads; clients get PEM files, which librdkafka reads. Standard library only, like
stack.py, which imports it.
"""

import subprocess
import tempfile
from pathlib import Path

DAYS = 3650
# Read by the broker and by the clients' hostname check: clients connect to 127.0.0.1.
BROKER_NAMES = "IP:127.0.0.1,DNS:localhost"


class CertificateError(Exception):
    """A tool failed; the message holds its command and output."""


def run(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise CertificateError(f"{' '.join(argv)} failed:\n{result.stdout}{result.stderr}")


def make_ca(folder: Path, name: str = "ca") -> tuple[Path, Path]:
    """A self-signed authority: (its key, its certificate)."""
    folder.mkdir(parents=True, exist_ok=True)
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    run(
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", str(DAYS),
        "-subj", f"/CN=InferenceHub {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return key, cert


def make_signed(
    folder: Path, name: str, ca: tuple[Path, Path], extensions: str
) -> tuple[Path, Path]:
    """A key pair whose certificate the authority ca signs: (its key, its certificate)."""
    key, cert, request = folder / f"{name}.key", folder / f"{name}.pem", folder / f"{name}.csr"
    run(
        "openssl", "req", "-newkey", "rsa:2048", "-nodes",
        "-keyout", str(key), "-out", str(request), "-subj", f"/CN=inferencehub-{name}",
    )  # fmt: skip
    with tempfile.NamedTemporaryFile("w", suffix=".ext") as ext:
        ext.write(extensions)
        ext.flush()
        run(
            "openssl", "x509", "-req", "-in", str(request),
            "-CA", str(ca[1]), "-CAkey", str(ca[0]), "-CAcreateserial",
            "-out", str(cert), "-days", str(DAYS), "-extfile", ext.name,
        )  # fmt: skip
    request.unlink()
    return key, cert


def make_broker_certificates(folder: Path, store_password: str) -> None:
    """Everything the secured broker and its clients need, in folder; made once (a second
    call keeps them, so clients configured with them go on working)."""
    done = folder / "certificates-made"
    if done.exists():
        return
    ca = make_ca(folder)
    broker_key, broker_cert = make_signed(
        folder,
        "broker",
        ca,
        f"subjectAltName={BROKER_NAMES}\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    make_signed(folder, "client", ca, "extendedKeyUsage=clientAuth\n")
    run(
        "openssl", "pkcs12", "-export", "-in", str(broker_cert), "-inkey", str(broker_key),
        "-certfile", str(ca[1]), "-name", "broker",
        "-out", str(folder / "broker.p12"), "-passout", f"pass:{store_password}",
    )  # fmt: skip
    run(
        "keytool", "-importcert", "-noprompt", "-alias", "stack-ca", "-file", str(ca[1]),
        "-keystore", str(folder / "truststore.p12"), "-storetype", "PKCS12",
        "-storepass", store_password,
    )  # fmt: skip
    done.touch()
