"""Real serving stacks for tests, started on 127.0.0.1 on free ports: a uvicorn/Starlette app with
GZipMiddleware, Debian's nginx (gzip, TLS, mutual TLS), and the certificates they need (a CA the test makes)."""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["free_port", "wait_port", "make_pki", "uvicorn_app", "nginx", "NGINX"]

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
_HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout_s:g} s")


def make_pki(folder: Path) -> dict[str, Path]:
    """A CA, server certificates (valid for localhost/127.0.0.1; one expired; one from an unknown CA) and a
    client certificate signed by the CA. PEM files in `folder`; returns name -> path."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)
    out: dict[str, Path] = {}

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def write(name: str, cert: x509.Certificate, k: ec.EllipticCurvePrivateKey | None = None) -> None:
        out[name] = folder / f"{name}.pem"
        out[name].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if k is not None:
            out[f"{name}_key"] = folder / f"{name}.key"
            out[f"{name}_key"].write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))

    def ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        k = key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(k.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
                .not_valid_after(now + dt.timedelta(days=30))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False, data_encipherment=False,
                                             key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(k.public_key()), critical=False)
                .sign(k, hashes.SHA256()))
        return cert, k

    def leaf(cn: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], *, client: bool = False,
             expired: bool = False) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        k = key()
        start, end = (now - dt.timedelta(days=30), now - dt.timedelta(days=1)) if expired else \
            (now - dt.timedelta(days=1), now + dt.timedelta(days=30))
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
             .issuer_name(issuer[0].subject).public_key(k.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(start).not_valid_after(end)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()), critical=False)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client
                                                   else ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
        if not client:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                             x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                critical=False)
        return b.sign(issuer[1], hashes.SHA256()), k

    the_ca = ca("harness test CA")
    write("ca", the_ca[0])
    other_ca = ca("some other CA")
    write("other_ca", other_ca[0])
    write("server", *leaf("localhost", the_ca))
    write("expired", *leaf("localhost", the_ca, expired=True))
    write("client", *leaf("harness-replay", the_ca, client=True))
    write("stranger_client", *leaf("stranger", other_ca, client=True))
    return out


@contextmanager
def uvicorn_app(folder: Path) -> Iterator[str]:
    """tests/starlette_gzip_app.py under uvicorn (one process); yields its base URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--app-dir", str(_HERE), "starlette_gzip_app:app",
                             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=folder)
    try:
        wait_port(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def nginx(folder: Path, servers: str) -> Iterator[None]:
    """Debian's nginx in the foreground with `servers` (server blocks) inside its http block."""
    assert NGINX is not None
    (folder / "logs").mkdir(exist_ok=True)
    user = "user root;\n" if os.geteuid() == 0 else ""  # the workers must read the test's private folder
    conf = folder / "nginx.conf"
    conf.write_text(f"""{user}worker_processes 1;
error_log {folder}/logs/error.log warn;
pid {folder}/nginx.pid;
events {{ worker_connections 512; }}
http {{
  access_log off;
  client_body_temp_path {folder}/body; proxy_temp_path {folder}/proxy; fastcgi_temp_path {folder}/fcgi;
  uwsgi_temp_path {folder}/uwsgi; scgi_temp_path {folder}/scgi;
  default_type application/json;
  gzip on; gzip_types application/json text/event-stream; gzip_min_length 200;
{servers}
}}
""")
    proc = subprocess.Popen([NGINX, "-p", str(folder), "-c", str(conf), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(0.3)
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited with {proc.returncode}: {proc.stderr.read().decode() if proc.stderr else ''}")
        yield
    finally:
        proc.terminate()
        proc.wait(10)
