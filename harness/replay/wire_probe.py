"""What a target's port speaks, asked before anything is sent: HTTP/1.1, HTTP/2 (gRPC) or TLS.

A target whose URL says one thing while its port speaks another fails every leg, each with an error that
hides why (a reset, invalid_json, an UNAVAILABLE). The pre-run check (harness.run.check_targets) asks once
and names the mismatch in one line:

- `probe_http` (http:// targets) sends `HEAD / HTTP/1.1` with `Connection: close` and reads the first bytes:
  an HTTP/1.x status line is what is wanted; HTTP/2 frames mean a gRPC (HTTP/2-only) port; a TLS alert, or
  a 400 or a closed connection from a port that then completes a TLS handshake, means a TLS port. A server
  that says nothing within the time is let through: the replay records what it does.
- `probe_grpc` (grpc:// targets) sends the HTTP/2 connection preface and an empty SETTINGS frame, as a
  gRPC client does, and wants a SETTINGS frame back; an HTTP/1.x answer or a TLS port is named.

Plain sockets with timeouts: it runs in the CLI's process before the replay starts, not in the send loop.
"""
from __future__ import annotations

import socket
import ssl

__all__ = ["probe_http", "probe_grpc", "H2_PREFACE"]

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS
_H2_SETTINGS, _H2_GOAWAY = 4, 7
_READ_BYTES = 512
_HTTP_WAIT_S = 1.0


def _exchange(host: str, port: int, payload: bytes, timeout_s: float) -> bytes | None:
    """The first bytes the server answers `payload` with: b"" when it closed (or reset) the connection
    without a byte, None when it said nothing within the time or could not be reached."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except OSError:
        return None  # unreachable: the connection check reports it
    try:
        sock.sendall(payload)
        data = sock.recv(_READ_BYTES)
        if data.startswith(b"HTTP/") and b"\r\n" not in data:
            data += sock.recv(_READ_BYTES)
        return data
    except (socket.timeout, TimeoutError):
        return None
    except OSError:
        return b""
    finally:
        sock.close()


def _is_h2_frame(data: bytes) -> bool:
    # A frame header: 24-bit length, type, flags, stream id; a server's first frames (SETTINGS, GOAWAY)
    # are on stream 0.
    return len(data) >= 9 and data[3] in (_H2_SETTINGS, _H2_GOAWAY) and data[5:9] == b"\0\0\0\0"


def _is_tls_record(data: bytes) -> bool:
    return len(data) >= 3 and data[0] in (0x15, 0x16) and data[1] == 0x03


def _speaks_tls(host: str, port: int, timeout_s: float) -> bool:
    """A TLS handshake completes on the port (certificates not checked: only the protocol is asked)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as raw:
            with ctx.wrap_socket(raw, server_hostname=host):
                return True
    except ssl.SSLError as exc:
        # a server that wants a client certificate refuses the handshake, but it is TLS all the same
        text = str(exc).lower()
        return "certificate" in text or "handshake failure" in text
    except OSError:
        return False


def probe_http(host: str, port: int, timeout_s: float) -> str | None:
    """None when the port answers HTTP/1.x (or cannot be told); else why it is not a plain HTTP port."""
    host_port = f"[{host}]" if ":" in host else host
    # A server that takes its time over `HEAD /` is no mismatch: the wait is short, so that it never holds
    # the start long.
    data = _exchange(host, port, f"HEAD / HTTP/1.1\r\nHost: {host_port}:{port}\r\nConnection: close\r\n\r\n"
                     .encode("latin-1"), min(timeout_s, _HTTP_WAIT_S))
    if data is None:
        return None
    if _is_h2_frame(data):
        return ("the port speaks HTTP/2 only, not HTTP/1.1: is it a gRPC port? (use a grpc:// url with "
                "protocol kserve_v2_grpc)")
    if _is_tls_record(data):
        return "the port serves TLS, not plain HTTP (use an https:// url)"
    if data.startswith(b"HTTP/"):
        status = data.split(b" ", 2)[1] if data.count(b" ") >= 1 else b""
        if status == b"400" and _speaks_tls(host, port, timeout_s):  # nginx: 400 to plain HTTP on its TLS port
            return "the port serves TLS, not plain HTTP: it answered 400 to plain HTTP (use an https:// url)"
        return None
    if data == b"" and _speaks_tls(host, port, timeout_s):
        return "the port serves TLS, not plain HTTP: it closed the plain HTTP request (use an https:// url)"
    return None


def probe_grpc(host: str, port: int, timeout_s: float) -> str | None:
    """None when the port answers the HTTP/2 preface with a SETTINGS frame; else why it is not a gRPC port."""
    data = _exchange(host, port, H2_PREFACE, timeout_s)
    if data is None:
        return f"no HTTP/2 answer to the connection preface within {timeout_s:g} s (is it a gRPC port?)"
    if _is_h2_frame(data) and data[3] == _H2_SETTINGS:
        return None
    if data.startswith(b"HTTP/1."):
        return ("the port answers HTTP/1.x, not HTTP/2: it is not a gRPC port (for the REST endpoint use an "
                "http:// url with protocol kserve_v2)")
    if _is_tls_record(data) or (data == b"" and _speaks_tls(host, port, timeout_s)):
        return "the port serves TLS (use a grpcs:// url, with tls.ca_file where the CA is private)"
    if data == b"":
        return "the server closed the connection at the HTTP/2 preface: it is not a gRPC port"
    return f"the port does not answer as HTTP/2 (first bytes {data[:16]!r}): it is not a gRPC port"
