"""A proxy's side of the control protocol (docs/control-protocol.md), standard library only: makes a
key and CSR with `openssl req`, registers with a cluster key, then calls the control listener with
mTLS (the issued certificate) and the proxy token. Used by test_control_manager.py and
bench/propagate.py to speak the real protocol to a real manager."""

import http.client
import json
import os
import ssl
import subprocess

from harness import LOCALHOST


def make_csr(workdir, name):
    """Returns (key_path, csr_pem) of a fresh P-256 key."""
    key = os.path.join(workdir, f"{name}.key")
    csr = os.path.join(workdir, f"{name}.csr")
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", key, "-out", csr, "-subj", f"/CN={name}"], check=True, capture_output=True)
    with open(csr) as f:
        return key, f.read()


class _ResumingConnection(http.client.HTTPSConnection):
    """HTTPSConnection that offers a saved TLS session (resumption) when it connects."""

    session = None

    def connect(self):
        http.client.HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self.host, session=self.session)


class ControlClient:
    def __init__(self, port, ca_file, workdir, name, kind="ingress", timeout=60, key=None):
        """key: (key_file, csr_pem) to reuse (the bench's fleet shares one), else a fresh one."""
        self.port, self.ca_file, self.workdir, self.name, self.kind = port, ca_file, workdir, name, kind
        self.timeout = timeout
        self.id = self.token = self.cert_file = None
        self.key_file, self.csr = key or make_csr(workdir, name)
        self._conn = None
        self._ctx = {}  # (cert, key) or None -> SSLContext (a session resumes only with its own context)
        self._session = None

    def context(self, client_cert=True):
        want = (self.cert_file, self.key_file) if client_cert and self.cert_file else None
        if want not in self._ctx:
            ctx = ssl.create_default_context(cafile=self.ca_file)
            if want:
                ctx.load_cert_chain(*want)
            self._ctx[want] = ctx
        return self._ctx[want]

    def request(self, method, path, body=None, client_cert=True, token=True, keep=False, resume=False):
        """(status, headers, parsed body). keep=True reuses one connection; resume=True opens a new
        connection that offers the TLS session of the previous one (the bench)."""
        if keep and self._conn:
            conn = self._conn
        else:
            conn = _ResumingConnection(LOCALHOST, self.port, timeout=self.timeout, context=self.context(client_cert))
            conn.session = self._session if resume else None
        h = {}
        if token and self.token:
            h["Authorization"] = f"Bearer {self.token if token is True else token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=h)
            r = conn.getresponse()
            payload = r.read()
            if conn.sock is not None and conn.sock.session is not None:
                self._session = conn.sock.session
        except Exception:
            conn.close()
            self._conn = None
            raise
        if keep:
            self._conn = conn
        else:
            conn.close()
        hdrs = {k.lower(): v for k, v in r.getheaders()}
        parsed = json.loads(payload) if payload and "json" in hdrs.get("content-type", "") else payload
        return r.status, hdrs, parsed

    def register(self, cluster_key, name=None, csr=None):
        body = {"cluster_key": cluster_key, "name": name or self.name, "kind": self.kind, "version": "0.5.0",
                "capabilities": ["http1", "tls"], "csr": csr or self.csr}
        st, h, b = self.request("POST", "/api/v1/proxies/register", body, client_cert=False, token=False)
        if st == 201:
            self.id, self.token = b["id"], b["token"]
            self.cert_file = os.path.join(self.workdir, f"{self.name}.pem")
            with open(self.cert_file, "w") as f:
                f.write(b["certificate"])
            self._conn = None
            self._ctx = {}
            self._session = None
        return st, h, b

    def config(self, since=None, wait=None, keep=False):
        q = []
        if since is not None:
            q.append(f"since={since}")
        if wait is not None:
            q.append(f"wait={wait}")
        return self.request("GET", f"/api/v1/proxies/{self.id}/config" + ("?" + "&".join(q) if q else ""), keep=keep)

    def heartbeat(self, applied_version, error=None, keep=False, resume=False, **extra):
        body = {"applied_version": applied_version, "applied_hash": extra.pop("applied_hash", None), "error": error,
                "uptime_s": 1, "version": "0.5.0",
                "counters": {"connections": 1, "requests": 2, "bytes_in": 3, "bytes_out": 4, "errors": 0},
                "cpu_seconds": 0.5, "rss_bytes": 1 << 20, **extra}
        return self.request("POST", f"/api/v1/proxies/{self.id}/heartbeat", body, keep=keep, resume=resume)
