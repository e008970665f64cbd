"""TLS for https targets: the client context from a target's `tls` settings, and the pre-run handshake check.

Certificates are verified by default (the system's trust store, or `ca_file`), with the host name checked
against `server_name` (default: the URL's host, also sent as SNI). `verify: false` turns both off; the run
says so and records it. `client_cert` / `client_key` present a client certificate (mutual TLS).

`check_tls` does one real handshake before anything is sent and names the cause of a failure in one line:
an untrusted or expired certificate, a name mismatch, a server that does not speak TLS, a handshake that
hangs. For a gRPC target with `verify: false` (`pin=True`: grpcio cannot turn verification off, so the
certificate the server presents is pinned, see `pinned_certificate`) it checks what grpcio will check of
it: its dates. A server that asks for a client certificate cannot be told apart, from the handshake alone, from one
that requires it (nginx completes the handshake and answers 400 to each request), so then, and only then,
the check sends one `HEAD /` and reads its status.
"""
from __future__ import annotations

import socket
import ssl
from typing import Any, Mapping

__all__ = ["client_context", "check_tls", "check_tls_pinned", "pinned_certificate", "TLS_KEYS", "PINNED_KEYS"]

TLS_KEYS = ("ca_file", "client_cert", "client_key", "server_name", "verify")
# Set by the pre-run check in a gRPC target's settings where verify is false: the certificate it pinned (PEM)
# and the name checked, so that the replay's processes use that one rather than fetch it again.
PINNED_KEYS = ("pinned_certificate", "pinned_name")

_EXPIRED = 10
_UNTRUSTED = frozenset({2, 18, 19, 20, 21, 27})  # no issuer, self-signed, self-signed in chain, local issuer, untrusted
_NAME_MISMATCH = frozenset({62, 64})  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
_CERTIFICATE_REQUEST = 13  # TLS handshake message type


def client_context(tls: Mapping[str, Any] | None) -> ssl.SSLContext:
    """The SSLContext for a target (`tls` as in TargetConfig.tls; None: verify with the system's CAs), for
    the pre-run check's blocking socket and the replay's memory BIOs alike."""
    tls = tls or {}
    ctx = ssl.create_default_context(cafile=tls.get("ca_file"))
    if tls.get("verify", True) is False:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.get("client_cert"):
        ctx.load_cert_chain(tls["client_cert"], tls.get("client_key"))
    return ctx


def check_tls(host: str, port: int, tls: Mapping[str, Any] | None, timeout_s: float, where: str,
              pin: bool = False) -> str | None:
    """One handshake with the target as the replay will do it: None when it succeeds, else one line naming
    the cause (`where` names the target and its setting, e.g. "targets.baseline.tls"). `pin`: the client
    pins the server's certificate where `verify` is false (gRPC)."""
    return check_tls_pinned(host, port, tls, timeout_s, where, pin)[0]


def check_tls_pinned(host: str, port: int, tls: Mapping[str, Any] | None, timeout_s: float, where: str,
                     pin: bool = False) -> tuple[str | None, tuple[str, str] | None]:
    """`check_tls`, and the certificate pinned (PEM, the name it is checked by) where `pin` and `verify` is
    false: what the gRPC client is to trust (`PINNED_KEYS`), fetched here once for every replay process."""
    tls = tls or {}
    problem = _check_handshake(host, port, tls, timeout_s, where)
    if problem is not None or not pin or tls.get("verify", True) is not False:
        return problem, None
    try:
        return None, pinned_certificate(host, port, tls, timeout_s)
    except ssl.SSLCertVerificationError as exc:
        if exc.verify_code == _EXPIRED:
            return (f"the server's certificate has expired ({exc.verify_message}); gRPC checks its dates even with "
                    f"{where}.verify: false (grpcio cannot turn verification off): renew it"), None
        return (f"the server's certificate cannot be pinned for {where}.verify: false: "
                f"{exc.verify_message or exc}"), None
    except (OSError, ssl.SSLError) as exc:
        return f"the server's certificate cannot be pinned for {where}.verify: false: {exc}", None


def _check_handshake(host: str, port: int, tls: Mapping[str, Any], timeout_s: float, where: str) -> str | None:
    name = tls.get("server_name") or host
    ctx = client_context(tls)
    asked: list[bool] = []

    def seen(_conn: Any, direction: str, _version: Any, _content: Any, msg_type: Any, _data: Any) -> None:
        if direction == "read" and msg_type == _CERTIFICATE_REQUEST:
            asked.append(True)

    if hasattr(ctx, "_msg_callback"):  # CPython's debug hook; without it the client-certificate probe is skipped
        ctx._msg_callback = seen  # noqa: SLF001
    try:
        raw = socket.create_connection((host, port), timeout=timeout_s)
    except OSError as exc:
        return f"cannot connect: {exc.strerror or exc}"
    try:
        try:
            sock = ctx.wrap_socket(raw, server_hostname=name)
        except ssl.SSLCertVerificationError as exc:
            return _verify_failure(exc, name, where)
        except ssl.SSLError as exc:
            return _handshake_failure(exc, where)
        except (socket.timeout, TimeoutError):
            return f"the TLS handshake did not finish within {timeout_s:g} s"
        except OSError as exc:
            return f"the TLS handshake failed: {exc.strerror or exc} (is the port serving TLS?)"
        if not asked:
            sock.close()
            return None
        try:
            return _probe_client_certificate(sock, host, port, bool(tls.get("client_cert")), where)
        finally:
            sock.close()
    finally:
        raw.close()


def _verify_failure(exc: ssl.SSLCertVerificationError, name: str, where: str) -> str:
    code, message = exc.verify_code, exc.verify_message
    if code == _EXPIRED:
        return f"the server's certificate has expired ({message}); renew it, or set {where}.verify: false to test anyway"
    if code in _UNTRUSTED:
        return (f"the server's certificate is not trusted ({message}); set {where}.ca_file to the CA that signed "
                "it, or verify: false to test anyway")
    if code in _NAME_MISMATCH:
        return (f"the server's certificate does not match the name {name!r} ({message}); set {where}.server_name "
                "to a name the certificate carries")
    return f"the server's certificate was refused: {message or exc}"


def _handshake_failure(exc: ssl.SSLError, where: str) -> str:
    reason = exc.reason or str(exc)
    text = reason.lower()
    if "wrong_version_number" in text or "wrong version number" in text or "record layer failure" in text:
        return "the server does not speak TLS on this port (use http:// for a plain HTTP target)"
    if "certificate required" in text or "certificate_required" in text or "handshake failure" in text:
        return f"the server requires a client certificate and did not accept one ({reason}); set {where}.client_cert"
    if "unknown ca" in text or "bad certificate" in text or "certificate unknown" in text:
        return f"the server refused the client certificate ({reason}); check {where}.client_cert and client_key"
    return f"the TLS handshake failed: {reason}"


def _probe_client_certificate(sock: ssl.SSLSocket, host: str, port: int, have_cert: bool, where: str) -> str | None:
    host_port = f"[{host}]" if ":" in host else host
    try:
        sock.sendall(f"HEAD / HTTP/1.1\r\nHost: {host_port}:{port}\r\nConnection: close\r\n\r\n".encode("latin-1"))
        head = sock.recv(4096)
    except ssl.SSLError as exc:  # TLS 1.3: the server's refusal of the certificate arrives after the handshake
        return _handshake_failure(exc, where)
    except OSError:
        return None  # the server closed the probe: the replay will record what it does
    parts = head.split(b" ", 2)
    status = parts[1] if len(parts) > 1 else b""
    if status in (b"400", b"495", b"496"):
        if have_cert:
            return (f"the server asked for a client certificate and answered {status.decode()} with the one given: "
                    f"check {where}.client_cert and client_key (is it signed by a CA the server trusts?)")
        return (f"the server requires a client certificate (it answered {status.decode()} without one); set "
                f"{where}.client_cert and {where}.client_key")
    return None


def pinned_certificate(host: str, port: int, tls: Mapping[str, Any] | None, timeout_s: float) -> tuple[str, str]:
    """The certificate a server presents (PEM), fetched without verification, and a name it carries (a DNS
    name of its subjectAltName, else its common name, else an IP address), for a client that can only verify:
    with it as the only root and that name as the one checked, that client trusts this server and no other.
    Its dates are checked (ssl.SSLCertVerificationError for an expired one). OSError when it cannot be fetched."""
    tls = dict(tls or {}, verify=False)
    name = tls.get("server_name") or host
    with socket.create_connection((host, port), timeout=timeout_s) as raw:
        with client_context(tls).wrap_socket(raw, server_hostname=name) as sock:
            der = sock.getpeercert(binary_form=True)
    if not der:
        raise OSError("the server presented no certificate")
    pem = ssl.DER_cert_to_PEM_cert(der)
    # Python decodes a certificate's names only from a verified handshake: one more, trusting just this one.
    ctx = ssl.create_default_context(cadata=pem)
    ctx.check_hostname = False
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # a server's own certificate as the root
    if tls.get("client_cert"):
        ctx.load_cert_chain(tls["client_cert"], tls.get("client_key"))
    with socket.create_connection((host, port), timeout=timeout_s) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as sock:
            cert: Any = sock.getpeercert() or {}
    alt: Any = cert.get("subjectAltName", ())
    names = [str(v) for k, v in alt if k == "DNS" and "*" not in v]
    names += [str(v) for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
    names += [str(v) for k, v in alt if k == "IP Address"]
    if tls.get("server_name") in names:
        return pem, str(tls["server_name"])
    if not names:
        raise OSError("the server's certificate carries no name to check it by")
    return pem, str(names[0])
