"""The manager serves the web UI and the live-event WebSocket: content types and caching headers of
the built files, the single-page-app fallback, no path traversal out of the UI directory, JSON 404s
for unknown API paths, and /api/v1/events (single-use tickets, role-scoped object/audit events)."""
import base64
import gzip
import json
import os
import socket
import struct
import tempfile
import time

from manager_harness import LOCALHOST, ManagerTestCase, run

INDEX = b"<!doctype html><title>MarchProxy</title><div id=root></div>"
APP_JS = b"console.log('app');" * 50
SECRET = b"outside the UI directory"


def make_ui(root):
    ui = os.path.join(root, "ui")
    os.makedirs(os.path.join(ui, "assets"))
    with open(os.path.join(ui, "index.html"), "wb") as f:
        f.write(INDEX)
    with open(os.path.join(ui, "assets", "app-3f9a1c.js"), "wb") as f:
        f.write(APP_JS)
    with open(os.path.join(ui, "assets", "app-3f9a1c.js.gz"), "wb") as f:
        f.write(gzip.compress(APP_JS))
    with open(os.path.join(ui, "favicon.svg"), "wb") as f:
        f.write(b"<svg/>")
    with open(os.path.join(root, "secret.txt"), "wb") as f:
        f.write(SECRET)
    os.symlink(os.path.join(root, "secret.txt"), os.path.join(ui, "leak.txt"))
    # A real asset whose pre-compressed sibling is a symlink out of the UI directory.
    with open(os.path.join(ui, "assets", "other-1b2c3d.js"), "wb") as f:
        f.write(APP_JS)
    with open(os.path.join(root, "secret.txt.gz"), "wb") as f:
        f.write(gzip.compress(SECRET))
    os.symlink(os.path.join(root, "secret.txt.gz"), os.path.join(ui, "assets", "other-1b2c3d.js.gz"))
    return ui


def raw_get(port, target, headers=""):
    """Sends the request target byte for byte (no client-side normalisation)."""
    with socket.create_connection((LOCALHOST, port), timeout=30) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    return status, head.decode("latin-1").lower(), body


class WsClient:
    """A minimal RFC 6455 client (text frames from the server, unmasked; we only send Close)."""

    def __init__(self, port, ticket):
        self.s = socket.create_connection((LOCALHOST, port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.s.sendall((f"GET /api/v1/events?ticket={ticket} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.s.recv(4096)
            if not chunk:
                break
            self.buf += chunk
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        self.status = int(head.split(b" ")[1])
        self.head = head.decode("latin-1")

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def message(self):
        b0, b1 = self._read(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack(">H", self._read(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", self._read(8))[0]
        payload = self._read(n)
        if b0 & 0x0F == 0x8:
            raise ConnectionError("close frame")
        return json.loads(payload)

    def next_event(self, types=("object", "audit", "proxy")):
        deadline = time.monotonic() + 60  # keepalives arrive every 25 s, so recv alone never times out
        while time.monotonic() < deadline:
            m = self.message()
            if m["type"] in types:
                return m
        raise AssertionError(f"no {types} event within 60 s")

    def close(self):
        self.s.close()


class WebUiTests(ManagerTestCase):

    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="mp-ui-")
        self.ui = make_ui(self.root)
        super().setUp()

    def start_manager(self, **kw):
        kw.setdefault("extra_args", ["--ui-dir", self.ui])
        return super().start_manager(**kw)

    def test_index_and_assets_with_caching_and_types(self):
        st, h, body = raw_get(self.mgr.port, "/")
        self.assertEqual((st, body), (200, INDEX))
        self.assertIn("content-type: text/html; charset=utf-8", h)
        self.assertIn("cache-control: no-cache", h)
        self.assertIn("content-security-policy: default-src 'self'", h)
        st, h, body = raw_get(self.mgr.port, "/assets/app-3f9a1c.js")
        self.assertEqual((st, body), (200, APP_JS))
        self.assertIn("content-type: text/javascript", h)
        self.assertIn("cache-control: public, max-age=31536000, immutable", h)
        st, h, body = raw_get(self.mgr.port, "/assets/app-3f9a1c.js", "Accept-Encoding: gzip, br\r\n")
        self.assertEqual(st, 200)
        self.assertIn("content-encoding: gzip", h)
        self.assertEqual(gzip.decompress(body), APP_JS)
        st, h, _ = raw_get(self.mgr.port, "/favicon.svg")
        self.assertEqual(st, 200)
        self.assertIn("content-type: image/svg+xml", h)

    def test_spa_fallback_for_client_routes_but_not_for_missing_files_or_api(self):
        for route in ("/clusters", "/services?cluster_id=1", "/audit/deep/link"):
            st, h, body = raw_get(self.mgr.port, route)
            self.assertEqual((st, body), (200, INDEX), route)
            self.assertIn("cache-control: no-cache", h)
        for missing in ("/assets/gone-123.js", "/missing.png", "/assets/noext"):
            st, h, body = raw_get(self.mgr.port, missing)
            self.assertEqual(st, 404, missing)
            self.assertNotIn(b"<title>", body)
        st, h, body = raw_get(self.mgr.port, "/api/v1/no-such-thing")
        self.assertEqual(st, 404)
        self.assertIn("content-type: application/problem+json", h)
        st, _, body = raw_get(self.mgr.port, "/api/v1/events")
        self.assertEqual(st, 426)
        self.assertIn(b"upgrade-required", body)

    def test_no_path_traversal(self):
        for target in ("/../secret.txt", "/%2e%2e/secret.txt", "/assets/..%2f..%2fsecret.txt",
                       "/assets/%2e%2e/%2e%2e/secret.txt", "/leak.txt", "/./index.html", "/assets//app-3f9a1c.js",
                       "/..%5csecret.txt", "/index.html%00.js"):
            st, _, body = raw_get(self.mgr.port, target)
            self.assertNotIn(SECRET, body, target)
            self.assertIn(st, (400, 404), target)
        # The gzip sibling of a real asset is held to the same rule: the plain file is served instead.
        st, head, body = raw_get(self.mgr.port, "/assets/other-1b2c3d.js", "Accept-Encoding: gzip\r\n")
        self.assertEqual(st, 200)
        self.assertNotIn("content-encoding: gzip", head)
        self.assertEqual(body, APP_JS)

    def ticket(self, client):
        st, _, b = client.post("/api/v1/events/ticket", {})
        self.assertEqual(st, 201, b)
        return b["ticket"]

    def test_events_need_a_single_use_ticket(self):
        ws = WsClient(self.mgr.port, "")
        self.assertEqual(ws.status, 401)
        ws.close()
        t = self.ticket(self.admin)
        ws = WsClient(self.mgr.port, t)
        self.assertEqual(ws.status, 101, ws.head)
        self.assertEqual(ws.message()["type"], "hello")
        again = WsClient(self.mgr.port, t)
        self.assertEqual(again.status, 401)
        again.close()
        ws.close()
        st, _, _ = self.mgr.client().post("/api/v1/events/ticket", {}, token="")
        self.assertEqual(st, 401)

    def test_event_streams_per_user_are_capped(self):
        streams = [WsClient(self.mgr.port, self.ticket(self.admin)) for _ in range(8)]
        for ws in streams:
            self.assertEqual(ws.status, 101, ws.head)
        ninth = WsClient(self.mgr.port, self.ticket(self.admin))
        self.assertEqual(ninth.status, 429, ninth.head)
        self.assertIn("8 event streams per user", ninth.buf.decode("latin-1"))
        ninth.close()
        streams.pop().close()
        # The closed stream's slot comes back once its connection thread has noticed the close.
        def reopened():
            ws = WsClient(self.mgr.port, self.ticket(self.admin))
            if ws.status == 101:
                streams.append(ws)
                return True
            ws.close()
            return False
        deadline = time.monotonic() + 30
        while not reopened():
            self.assertLess(time.monotonic(), deadline, "slot never freed")
            time.sleep(0.2)
        for ws in streams:
            ws.close()

    def test_stream_ends_when_its_api_token_is_revoked(self):
        st, _, tok = self.admin.post("/api/v1/auth/tokens", {"name": "ws"})
        self.assertEqual(st, 201, tok)
        ws = WsClient(self.mgr.port, self.ticket(self.mgr.client(tok["token"])))
        self.assertEqual(ws.status, 101, ws.head)
        self.assertEqual(ws.message()["type"], "hello")
        self.assertEqual(self.admin.delete(f"/api/v1/auth/tokens/{tok['id']}")[0], 204)
        # The stream re-checks its credential every 30 s; then it must end (a close frame or EOF).
        deadline = time.monotonic() + 90
        with self.assertRaises(ConnectionError):
            while time.monotonic() < deadline:
                ws.message()
        ws.close()

    def test_admin_gets_object_and_audit_events_without_secrets(self):
        ws = WsClient(self.mgr.port, self.ticket(self.admin))
        self.assertEqual(ws.message(), {"type": "hello", "user": "admin", "role": "admin"})
        c = self.make_cluster("prod")
        events = [ws.next_event(), ws.next_event()]
        obj = next(e for e in events if e["type"] == "object")
        audit = next(e for e in events if e["type"] == "audit")
        self.assertEqual((obj["resource"], obj["action"], obj["id"], obj["cluster_id"]),
                         ("clusters", "created", c["id"], c["id"]))
        self.assertEqual(obj["data"]["name"], "prod")
        self.assertNotIn("api_key", obj["data"])
        self.assertNotIn(c["api_key"], json.dumps(events))
        self.assertEqual((audit["action"], audit["data"]["resource"]), ("cluster.create", f"clusters/{c['id']}"))
        st, _, _ = self.admin.patch(f"/api/v1/clusters/{c['id']}", {"description": "changed"})
        self.assertEqual(st, 200)
        upd = ws.next_event(("object",))
        self.assertEqual((upd["action"], upd["data"]["description"]), ("updated", "changed"))
        st, _, _ = self.admin.delete(f"/api/v1/clusters/{c['id']}")
        self.assertEqual(st, 204)
        gone = ws.next_event(("object",))
        self.assertEqual((gone["action"], gone["id"], gone["data"]["name"]), ("deleted", c["id"], "prod"))
        ws.close()

    def test_events_are_scoped_to_what_the_user_may_read(self):
        a = self.make_cluster("team-a")
        b = self.make_cluster("team-b")
        owner, oc = self.make_user("owner", "service-owner")
        st, _, _ = self.admin.post(f"/api/v1/users/{owner['id']}/clusters", {"cluster_id": a["id"]})
        self.assertEqual(st, 201)
        _, vc = self.make_user("viewer", "viewer")
        ow = WsClient(self.mgr.port, self.ticket(oc))
        vw = WsClient(self.mgr.port, self.ticket(vc))
        self.assertEqual(ow.message()["role"], "service-owner")
        self.assertEqual(vw.message()["role"], "viewer")
        self.make_service(b["id"], "hidden")    # not the owner's cluster; an audit row too
        self.make_service(a["id"], "visible")
        first = ow.next_event(("object", "audit"))
        self.assertEqual((first["type"], first["data"]["name"]), ("object", "visible"))
        seen = vw.next_event(("object", "audit"))  # viewers read all configuration, but no audit log
        self.assertEqual((seen["type"], seen["data"]["name"]), ("object", "hidden"))
        self.assertEqual(vw.next_event(("object", "audit"))["data"]["name"], "visible")
        ow.close()
        vw.close()

    def test_a_service_owner_gets_the_delete_event_of_their_service(self):
        # Review M2: the row and its assignment are gone when the event is checked; the stream
        # remembers which services the owner had.
        c = self.make_cluster("team-c")
        owner, oc = self.make_user("svc-owner", "service-owner")
        mine = self.make_service(c["id"], "mine")
        other = self.make_service(c["id"], "not-mine")
        st, _, b = self.admin.post(f"/api/v1/users/{owner['id']}/services", {"service_id": mine["id"]})
        self.assertEqual(st, 201, b)
        ow = WsClient(self.mgr.port, self.ticket(oc))
        self.assertEqual(ow.message()["role"], "service-owner")
        self.assertEqual(self.admin.delete(f"/api/v1/services/{other['id']}")[0], 204)  # not theirs: not sent
        self.assertEqual(self.admin.delete(f"/api/v1/services/{mine['id']}")[0], 204)
        gone = ow.next_event(("object",))
        self.assertEqual((gone["resource"], gone["action"], gone["id"]), ("services", "deleted", mine["id"]))
        ow.close()


if __name__ == "__main__":
    run()
