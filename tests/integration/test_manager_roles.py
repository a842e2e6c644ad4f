"""Roles, enforced on every endpoint: every write endpoint in the OpenAPI document is tried as a
viewer and as a service-owner with no assignments (403 each, nothing changes, each refusal is
audited); a service-owner with assignments can do exactly what is assigned to them. Both backends."""
import json

from manager_harness import ManagerTestCase, both_backends, run

# Endpoints every authenticated user may call for their own account.
SELF_SERVICE = {
    "POST /api/v1/auth/login", "POST /api/v1/auth/refresh", "POST /api/v1/auth/logout",
    "POST /api/v1/auth/password", "POST /api/v1/auth/totp/enroll", "POST /api/v1/auth/totp/verify",
    "POST /api/v1/auth/totp/disable", "POST /api/v1/auth/tokens", "DELETE /api/v1/auth/tokens/{id}",
    "POST /api/v1/events/ticket",  # live events: every role, scoped by what it may read
}


class RoleTests(ManagerTestCase):

    def fixtures(self):
        c = self.make_cluster("prod")
        s = self.make_service(c["id"], "web")
        s2 = self.make_service(c["id"], "db", auth_type="jwt")
        st, _, m = self.admin.post("/api/v1/mappings", {
            "cluster_id": c["id"], "name": "web-db", "source_services": [s["id"]],
            "destination_services": [s2["id"]], "protocols": ["tcp"], "ports": [5432]})
        self.assertEqual(st, 201, m)
        st, _, r = self.admin.post("/api/v1/routes", {
            "cluster_id": c["id"], "name": "site", "hosts": ["site.example.com"],
            "backends": [{"address": "10.0.0.1:80"}]})
        self.assertEqual(st, 201, r)
        st, _, self.forward = self.admin.post("/api/v1/forwards", {
            "cluster_id": c["id"], "name": "pg", "listen_address": "127.0.0.1:15432", "destination": "db.test:5432",
            "sources": [{"cidr": "10.0.0.0/8", "service_id": s["id"]}]})
        self.assertEqual(st, 201, self.forward)
        return c, s, s2, m, r

    def valid_body(self, method, path, f):
        c, s, s2, m, r = f
        bodies = {
            "POST /api/v1/clusters": {"name": "new-cluster"},
            "PATCH /api/v1/clusters/{id}": {"description": "changed"},
            "POST /api/v1/clusters/{id}/rotate-key": {"grace_seconds": 60},
            "POST /api/v1/services": {"cluster_id": c["id"], "name": "new-svc", "ip_fqdn": "10.0.0.9"},
            "PATCH /api/v1/services/{id}": {"ip_fqdn": "10.0.0.10"},
            "POST /api/v1/services/{id}/rotate-secret": None,
            "POST /api/v1/mappings": {"cluster_id": c["id"], "name": "new-map", "source_services": [s["id"]],
                                      "destination_services": [s2["id"]], "protocols": ["udp"], "ports": [53]},
            "PATCH /api/v1/mappings/{id}": {"comment": "changed"},
            "POST /api/v1/forwards": {"cluster_id": c["id"], "name": "new-fwd", "listen_address": "127.0.0.1:15433",
                                      "destination": "db.test:5432",
                                      "sources": [{"cidr": "10.0.0.0/8", "service_id": s["id"]}]},
            "PATCH /api/v1/forwards/{id}": {"comment": "changed"},
            "POST /api/v1/routes": {"cluster_id": c["id"], "name": "new-route", "hosts": ["n.example.com"],
                                    "backends": [{"address": "10.0.0.2:80"}]},
            "PATCH /api/v1/routes/{id}": {"enabled": False},
            "POST /api/v1/certificates": {"name": "cert", "cert_pem": "x", "key_pem": "y"},
            "PATCH /api/v1/certificates/{id}": {"description": "changed"},
            "POST /api/v1/users": {"username": "mallory", "password": "mallory-password", "role": "admin"},
            "PATCH /api/v1/users/{id}": {"role": "admin"},
            "POST /api/v1/users/{id}/clusters": {"cluster_id": c["id"]},
            "POST /api/v1/users/{id}/services": {"service_id": s["id"]},
            "PUT /api/v1/settings/{key}": {"value": 1},
        }
        return bodies.get(f"{method} {path}")

    def concrete(self, path, f, me_id):
        c, s, s2, m, r = f
        ids = {"/api/v1/clusters/": c["id"], "/api/v1/services/": s2["id"], "/api/v1/mappings/": m["id"],
               "/api/v1/forwards/": self.forward["id"],
               "/api/v1/routes/": r["id"], "/api/v1/certificates/": 1, "/api/v1/users/": me_id,
               "/api/v1/proxies/": 1}
        out = path
        for prefix, i in ids.items():
            if out.startswith(prefix):
                out = out.replace("{id}", str(i), 1)
        return out.replace("{target}", "1").replace("{key}", "retention")

    def test_every_write_endpoint_refuses_viewer_and_unassigned_owner(self):
        f = self.fixtures()
        doc = self.admin.get("/api/v1/openapi.json")[2]
        # (Routes tagged "control" live on the control listener, for proxies: test_control_manager.py.)
        writes = [(m.upper(), p) for p, item in doc["paths"].items() for m in item
                  if m.upper() in ("POST", "PUT", "PATCH", "DELETE")
                  and f"{m.upper()} {p}" not in SELF_SERVICE and "control" not in item[m].get("tags", [])]
        self.assertGreater(len(writes), 20)
        before = {t: self.admin.get(f"/api/v1/{t}")[2] for t in ("clusters", "services", "mappings", "forwards", "routes")}
        users_before = self.admin.get("/api/v1/users")[2]
        viewer_u, viewer = self.make_user("vera", "viewer")
        owner_u, owner = self.make_user("otto", "service-owner")
        for role, client, me in (("viewer", viewer, viewer_u), ("service-owner", owner, owner_u)):
            for method, path in writes:
                concrete = self.concrete(path, f, me["id"])
                body = self.valid_body(method, path, f)
                st, h, b = client.request(method, concrete, body=body)
                with self.subTest(role=role, endpoint=f"{method} {path}"):
                    self.assertEqual(st, 403, f"{role} {method} {concrete}: {st} {b}")
                    self.assertTrue(h["content-type"].startswith("application/problem+json"))
        # Nothing changed (the users list gained only the two test users).
        for t, v in before.items():
            after = self.admin.get(f"/api/v1/{t}")[2]
            self.assertEqual(json.dumps(after, sort_keys=True), json.dumps(v, sort_keys=True), t)
        self.assertEqual(self.admin.get("/api/v1/users")[2]["total"], users_before["total"] + 2)
        # Every refusal is in the audit log.
        denied = self.admin.get("/api/v1/audit?outcome=denied&limit=1000")[2]
        self.assertGreaterEqual(denied["total"], 2 * len(writes))
        self.assertEqual({e["actor"] for e in denied["items"]}, {"vera", "otto"})
        # Reads: the viewer sees configuration but not users or the audit log.
        self.assertEqual(viewer.get("/api/v1/services")[2]["total"], 2)
        self.assertEqual(viewer.get("/api/v1/users")[0], 403)
        self.assertEqual(viewer.get("/api/v1/audit")[0], 403)
        self.assertEqual(viewer.get("/api/v1/audit/verify")[0], 403)
        # The unassigned owner sees nothing of the cluster.
        self.assertEqual(owner.get("/api/v1/services")[2]["total"], 0)
        self.assertEqual(owner.get("/api/v1/clusters")[2]["total"], 0)
        self.assertEqual(owner.get(f"/api/v1/clusters/{f[0]['id']}")[0], 403)

    def test_owner_can_do_exactly_what_is_assigned(self):
        c, s, s2, m, r = self.fixtures()
        other = self.make_cluster("other")
        foreign = self.make_service(other["id"], "foreign")
        owner_u, owner = self.make_user("otto", "service-owner")
        # Assign one service (not the cluster).
        self.assertEqual(self.admin.post(f"/api/v1/users/{owner_u['id']}/services", {"service_id": s["id"]})[0], 201)
        self.assertEqual([x["name"] for x in owner.get("/api/v1/services")[2]["items"]], ["web"])
        self.assertEqual(owner.patch(f"/api/v1/services/{s['id']}", {"description": "mine"})[0], 200)
        self.assertEqual(owner.patch(f"/api/v1/services/{s2['id']}", {"description": "not mine"})[0], 403)
        self.assertEqual(owner.patch(f"/api/v1/services/{foreign['id']}", {"description": "x"})[0], 403)
        self.assertEqual(owner.post("/api/v1/services", {"cluster_id": c["id"], "name": "n", "ip_fqdn": "n.x"})[0], 403)
        # Mappings from their own service may be requested; from someone else's may not.
        mine = {"cluster_id": c["id"], "name": "req", "source_services": [s["id"]],
                "destination_services": [s2["id"]], "protocols": ["tcp"], "ports": [80]}
        st, _, own_map = owner.post("/api/v1/mappings", mine)
        self.assertEqual(st, 201, own_map)
        theirs = {**mine, "name": "req2", "source_services": [s2["id"]]}
        self.assertEqual(owner.post("/api/v1/mappings", theirs)[0], 403)
        # (review M6) Every other way to a mapping from someone else's services is refused too: a
        # mix of own and foreign sources, a collection (it may hold foreign services), and editing
        # or deleting a mapping whose sources are not theirs; their own mapping cannot be edited
        # into one either.
        mixed = {**mine, "name": "req3", "source_services": [s["id"], s2["id"]]}
        self.assertEqual(owner.post("/api/v1/mappings", mixed)[0], 403)
        coll = {k: v for k, v in mine.items() if k != "source_services"}
        self.assertEqual(owner.post("/api/v1/mappings", {**coll, "name": "req4", "source_collections": ["tier"]})[0],
                         403)
        st, _, foreign_map = self.admin.post("/api/v1/mappings", {**theirs, "name": "admins"})
        self.assertEqual(st, 201, foreign_map)
        self.assertEqual(owner.patch(f"/api/v1/mappings/{foreign_map['id']}", {"comment": "mine now"})[0], 403)
        self.assertEqual(owner.patch(f"/api/v1/mappings/{foreign_map['id']}",
                                     {"source_services": [s["id"]]})[0], 403)
        self.assertEqual(owner.delete(f"/api/v1/mappings/{foreign_map['id']}")[0], 403)
        self.assertEqual(owner.patch(f"/api/v1/mappings/{own_map['id']}", {"source_services": [s2["id"]]})[0], 403)
        self.assertEqual(owner.patch(f"/api/v1/mappings/{own_map['id']}", {"source_collections": ["tier"]})[0], 403)
        self.assertEqual(self.admin.get(f"/api/v1/mappings/{foreign_map['id']}")[2], foreign_map)
        self.assertEqual(self.admin.get(f"/api/v1/mappings/{own_map['id']}")[2]["source_services"], [s["id"]])
        self.assertEqual(owner.patch(f"/api/v1/mappings/{own_map['id']}", {"comment": "ok"})[0], 200)
        self.assertEqual(owner.delete(f"/api/v1/mappings/{own_map['id']}")[0], 204)
        denied = [e for e in self.admin.get("/api/v1/audit?outcome=denied&actor=otto")[2]["items"]
                  if e["action"].startswith("mapping.")]
        self.assertGreaterEqual(len(denied), 7)
        self.assertEqual(owner.patch(f"/api/v1/clusters/{c['id']}", {"description": "x"})[0], 403)
        # Assign the cluster: now its services and the cluster itself are theirs to edit.
        self.assertEqual(self.admin.post(f"/api/v1/users/{owner_u['id']}/clusters", {"cluster_id": c["id"]})[0], 201)
        self.assertEqual(owner.patch(f"/api/v1/clusters/{c['id']}", {"description": "x"})[0], 200)
        self.assertEqual(owner.patch(f"/api/v1/services/{s2['id']}", {"description": "now mine"})[0], 200)
        self.assertEqual(owner.post("/api/v1/services", {"cluster_id": c["id"], "name": "n", "ip_fqdn": "n.x"})[0], 201)
        self.assertEqual(owner.post("/api/v1/services", {"cluster_id": other["id"], "name": "n", "ip_fqdn": "n.x"})[0],
                         403)
        self.assertEqual(owner.delete(f"/api/v1/clusters/{c['id']}")[0], 403)
        self.assertEqual(owner.patch(f"/api/v1/routes/{r['id']}", {"enabled": False})[0], 403)
        # A role change applies at once: tokens already issued end (review M8), and a new login gets
        # the new role.
        self.assertEqual(self.admin.patch(f"/api/v1/users/{owner_u['id']}", {"role": "viewer"})[0], 200)
        self.assertEqual(owner.patch(f"/api/v1/clusters/{c['id']}", {"description": "y"})[0], 401)
        owner.login("otto", "user-password-123")
        self.assertEqual(owner.patch(f"/api/v1/clusters/{c['id']}", {"description": "y"})[0], 403)


both_backends(RoleTests, globals())

if __name__ == "__main__":
    run()
