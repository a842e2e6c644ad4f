"""A small TLS HTTP/1.1 client on the standard ssl module, for the test_tls_*.py tests: chooses the
SNI name independently of the address, keeps connections alive, exposes the peer certificate and
session resumption."""
import http.client
import socket
import ssl

from harness import LOCALHOST
from tls_certs import fingerprint  # noqa: F401  (re-exported for the tests)


def client_context(ca=None, cert=None, key=None, min_version=None, max_version=None, tickets=True):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca:
        ctx.load_verify_locations(ca)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(cert, key)
    if min_version:
        ctx.minimum_version = min_version
    if max_version:
        ctx.maximum_version = max_version
    if not tickets:
        ctx.options |= ssl.OP_NO_TICKET
    return ctx


class TlsConn:
    def __init__(self, port, ctx, sni="test.local", session=None, timeout=10.0):
        raw = socket.create_connection((LOCALHOST, port), timeout=timeout)
        try:
            self.sock = ctx.wrap_socket(raw, server_hostname=sni, session=session)
        except BaseException:
            raw.close()
            raise
        self.sni = sni

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def peer_der(self):
        return self.sock.getpeercert(binary_form=True)

    def request(self, method="GET", path="/", headers=None, host=None, body=None):
        """One request on this connection; returns (status, headers dict lower-case, body bytes)."""
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host or self.sni}"]
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")
        self.sock.sendall(data)
        resp = http.client.HTTPResponse(self.sock, method=method)
        resp.begin()
        payload = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, payload


def der_fingerprint(der):
    import hashlib
    return hashlib.sha256(der).hexdigest()
