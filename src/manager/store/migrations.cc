#include "manager/store/migrations.h"

#include <algorithm>
#include <string>
#include <vector>

#include "manager/util/time.h"

namespace marchproxy::manager::store {
namespace {

// The tables are written once with two tokens, then expanded per dialect: {ID} an auto-increment
// primary key, {INT} a 64-bit integer. Everything else is SQL both dialects accept. Booleans are
// INTEGER 0/1 on both so values read back identically.
constexpr const char* kV1Tables = R"SQL(
CREATE TABLE users (
  id {ID}, username TEXT NOT NULL UNIQUE, email TEXT NOT NULL DEFAULT '',
  password_hash TEXT NOT NULL,
  role TEXT NOT NULL CHECK (role IN ('admin', 'service-owner', 'viewer')),
  totp_secret_enc TEXT, totp_enabled INTEGER NOT NULL DEFAULT 0, backup_codes TEXT NOT NULL DEFAULT '[]',
  disabled INTEGER NOT NULL DEFAULT 0,
  created_at TEXT NOT NULL, updated_at TEXT NOT NULL, version {INT} NOT NULL DEFAULT 1);
CREATE TABLE clusters (
  id {ID}, name TEXT NOT NULL UNIQUE, description TEXT NOT NULL DEFAULT '',
  api_key_hash TEXT NOT NULL, prev_api_key_hash TEXT, prev_api_key_expires TEXT,
  syslog_endpoint TEXT NOT NULL DEFAULT '', log_auth INTEGER NOT NULL DEFAULT 1,
  log_netflow INTEGER NOT NULL DEFAULT 0, log_debug INTEGER NOT NULL DEFAULT 0,
  config_version {INT} NOT NULL DEFAULT 1,
  created_at TEXT NOT NULL, updated_at TEXT NOT NULL, version {INT} NOT NULL DEFAULT 1);
CREATE TABLE services (
  id {ID}, cluster_id {INT} NOT NULL REFERENCES clusters(id) ON DELETE RESTRICT,
  name TEXT NOT NULL, description TEXT NOT NULL DEFAULT '', ip_fqdn TEXT NOT NULL,
  collection TEXT NOT NULL DEFAULT '',
  auth_type TEXT NOT NULL DEFAULT 'none' CHECK (auth_type IN ('none', 'base64', 'jwt')),
  secret_enc TEXT, secret_rotated_at TEXT, jwt_expiry {INT} NOT NULL DEFAULT 3600,
  created_at TEXT NOT NULL, updated_at TEXT NOT NULL, version {INT} NOT NULL DEFAULT 1,
  UNIQUE (cluster_id, name));
CREATE INDEX services_cluster ON services (cluster_id);
CREATE TABLE mappings (
  id {ID}, cluster_id {INT} NOT NULL REFERENCES clusters(id) ON DELETE RESTRICT,
  name TEXT NOT NULL, source_services TEXT NOT NULL DEFAULT '[]', source_collections TEXT NOT NULL DEFAULT '[]',
  destination_services TEXT NOT NULL, protocols TEXT NOT NULL,
  ports TEXT NOT NULL DEFAULT '[]', auth_required INTEGER NOT NULL DEFAULT 0, priority {INT} NOT NULL DEFAULT 100,
  enabled INTEGER NOT NULL DEFAULT 1, comment TEXT NOT NULL DEFAULT '',
  created_at TEXT NOT NULL, updated_at TEXT NOT NULL, version {INT} NOT NULL DEFAULT 1,
  UNIQUE (cluster_id, name));
CREATE INDEX mappings_cluster ON mappings (cluster_id);
CREATE TABLE certificates (
  id {ID}, name TEXT NOT NULL UNIQUE, cert_pem TEXT NOT NULL, key_enc TEXT NOT NULL, not_after TEXT NOT NULL DEFAULT '',
  description TEXT NOT NULL DEFAULT '',
  created_at TEXT NOT NULL, updated_at TEXT NOT NULL, version {INT} NOT NULL DEFAULT 1);
CREATE TABLE ingress_routes (
  id {ID}, cluster_id {INT} NOT NULL REFERENCES clusters(id) ON DELETE RESTRICT,
  name TEXT NOT NULL, hosts TEXT NOT NULL, paths TEXT NOT NULL DEFAULT '["/"]', backends TEXT NOT NULL,
  lb_policy TEXT NOT NULL DEFAULT 'round_robin', health_check TEXT NOT NULL DEFAULT '{}',
  rate_limit TEXT NOT NULL DEFAULT '{}',
  certificate_id {INT} REFERENCES certificates(id) ON DELETE RESTRICT,
  mtls_allow TEXT NOT NULL DEFAULT '[]', header_rewrites TEXT NOT NULL DEFAULT '[]',
  enabled INTEGER NOT NULL DEFAULT 1,
  created_at TEXT NOT NULL, updated_at TEXT NOT NULL, version {INT} NOT NULL DEFAULT 1,
  UNIQUE (cluster_id, name));
CREATE TABLE user_clusters (
  user_id {INT} NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  cluster_id {INT} NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
  PRIMARY KEY (user_id, cluster_id));
CREATE TABLE user_services (
  user_id {INT} NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  service_id {INT} NOT NULL REFERENCES services(id) ON DELETE CASCADE,
  PRIMARY KEY (user_id, service_id));
CREATE TABLE proxy_servers (
  id {ID}, cluster_id {INT} NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
  name TEXT NOT NULL, kind TEXT NOT NULL DEFAULT 'egress', address TEXT NOT NULL DEFAULT '',
  applied_config_version {INT} NOT NULL DEFAULT 0, last_seen TEXT,
  created_at TEXT NOT NULL, UNIQUE (cluster_id, name));
CREATE TABLE settings (
  key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at TEXT NOT NULL, version {INT} NOT NULL DEFAULT 1);
CREATE TABLE secrets (
  name TEXT PRIMARY KEY, value_enc TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE refresh_tokens (
  id {ID}, user_id {INT} NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  token_hash TEXT NOT NULL UNIQUE, family TEXT NOT NULL, expires_at TEXT NOT NULL,
  revoked INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL);
CREATE TABLE api_tokens (
  id {ID}, user_id {INT} NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  name TEXT NOT NULL, token_hash TEXT NOT NULL UNIQUE, revoked INTEGER NOT NULL DEFAULT 0,
  last_used_at TEXT, created_at TEXT NOT NULL, UNIQUE (user_id, name));
CREATE TABLE audit_log (
  id {ID}, ts TEXT NOT NULL, actor TEXT NOT NULL, source_ip TEXT NOT NULL, action TEXT NOT NULL,
  resource TEXT NOT NULL, summary TEXT NOT NULL, outcome TEXT NOT NULL,
  prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
)SQL";

constexpr const char* kV1SqliteTriggers = R"SQL(
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
  BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
  BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
)SQL";

constexpr const char* kV1PostgresTriggers = R"SQL(
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
  FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
  FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
)SQL";

// v2: the certificate authority (src/manager/ca). Every certificate, including the CA's own, is a row
// of `certificates`; `kind` says where it came from. Rows that existed before are imports.
constexpr const char* kV2Certificates = R"SQL(
ALTER TABLE certificates ADD COLUMN kind TEXT NOT NULL DEFAULT 'imported'
  CHECK (kind IN ('server', 'client', 'proxy', 'imported', 'ca'));
ALTER TABLE certificates ADD COLUMN serial TEXT;
ALTER TABLE certificates ADD COLUMN subject TEXT NOT NULL DEFAULT '';
ALTER TABLE certificates ADD COLUMN issuer TEXT NOT NULL DEFAULT '';
ALTER TABLE certificates ADD COLUMN sans TEXT NOT NULL DEFAULT '[]';
ALTER TABLE certificates ADD COLUMN not_before TEXT NOT NULL DEFAULT '';
ALTER TABLE certificates ADD COLUMN revoked_at TEXT;
ALTER TABLE certificates ADD COLUMN revoke_reason TEXT NOT NULL DEFAULT '';
ALTER TABLE certificates ADD COLUMN renewed_at TEXT;
CREATE UNIQUE INDEX certificates_issuer_serial ON certificates (issuer, serial);
CREATE INDEX certificates_serial ON certificates (serial);
CREATE INDEX certificates_revoked ON certificates (revoked_at);
)SQL";

// Version 3 (control loop, docs/control-protocol.md): what the manager knows about each registered
// proxy, and per-cluster listener addresses compiled into the snapshots. Version 2 belongs to the
// certificate authority and licensing (ca/, license/).
constexpr const char* kV3Control = R"SQL(
ALTER TABLE proxy_servers ADD COLUMN token_hash TEXT;
ALTER TABLE proxy_servers ADD COLUMN cert_serial TEXT;
ALTER TABLE proxy_servers ADD COLUMN cert_not_after TEXT;
ALTER TABLE proxy_servers ADD COLUMN status TEXT NOT NULL DEFAULT 'active';
ALTER TABLE proxy_servers ADD COLUMN sw_version TEXT NOT NULL DEFAULT '';
ALTER TABLE proxy_servers ADD COLUMN capabilities TEXT NOT NULL DEFAULT '[]';
ALTER TABLE proxy_servers ADD COLUMN heartbeat TEXT;
ALTER TABLE proxy_servers ADD COLUMN applied_hash TEXT;
ALTER TABLE proxy_servers ADD COLUMN error TEXT;
ALTER TABLE proxy_servers ADD COLUMN revoked_at TEXT;
ALTER TABLE proxy_servers ADD COLUMN updated_at TEXT;
CREATE UNIQUE INDEX proxy_servers_token ON proxy_servers (token_hash);
ALTER TABLE clusters ADD COLUMN ingress_http_address TEXT NOT NULL DEFAULT '0.0.0.0:8080';
ALTER TABLE clusters ADD COLUMN ingress_https_address TEXT NOT NULL DEFAULT '0.0.0.0:9443';
ALTER TABLE clusters ADD COLUMN egress_proxy_address TEXT NOT NULL DEFAULT '127.0.0.1:3128';
ALTER TABLE clusters ADD COLUMN egress_socks5_address TEXT NOT NULL DEFAULT '127.0.0.1:1080';
)SQL";

// v4: every serial MarchProxy ever issued, one row per certificate it signed (a renewal adds a row;
// the `certificates` row keeps only the current one). Revocations live here and the CRL is built
// from this table, so neither a renewal nor deleting a `certificates` row can take a serial out of
// the CRL: there is deliberately no foreign key to certificates. Existing issued rows are copied in
// (their earlier serials, from before this table, are not known). A revocation reason of
// removeFromCRL is only meaningful in delta CRLs (OpenSSL treats it as "not revoked"); old rows with
// it are rewritten to unspecified so they revoke. Independent of v3 (the control loop's columns).
constexpr const char* kV4CertificateSerials = R"SQL(
CREATE TABLE certificate_serials (
  id {ID}, certificate_id {INT} NOT NULL, issuer TEXT NOT NULL, serial TEXT NOT NULL,
  not_after TEXT NOT NULL, issued_at TEXT NOT NULL, revoked_at TEXT, revoke_reason TEXT NOT NULL DEFAULT '',
  UNIQUE (issuer, serial));
CREATE INDEX certificate_serials_certificate ON certificate_serials (certificate_id);
CREATE INDEX certificate_serials_serial ON certificate_serials (serial);
CREATE INDEX certificate_serials_revoked ON certificate_serials (revoked_at);
UPDATE certificates SET revoke_reason = 'unspecified' WHERE revoke_reason = 'removeFromCRL';
INSERT INTO certificate_serials (certificate_id, issuer, serial, not_after, issued_at, revoked_at, revoke_reason)
  SELECT id, issuer, serial, not_after, created_at, revoked_at, revoke_reason FROM certificates
  WHERE kind IN ('server', 'client', 'proxy') AND serial IS NOT NULL;
)SQL";

// v5 (security review M3, M7, M8): a per-user token epoch that every access token carries and every
// request checks (bumped on password change, disabling, role change, logout of all sessions); the
// audit chain's anchor (the newest row's id and hash and the row count, updated with every append,
// HMAC'd under the master key) so a removed tail is detected; and the login throttle's counters, so
// a restart or a second manager does not reset them.
constexpr const char* kV5Security = R"SQL(
ALTER TABLE users ADD COLUMN token_epoch {INT} NOT NULL DEFAULT 0;
CREATE TABLE audit_anchor (
  id {INT} PRIMARY KEY, last_id {INT} NOT NULL, last_hash TEXT NOT NULL, row_count {INT} NOT NULL,
  mac TEXT NOT NULL DEFAULT '', updated_at TEXT NOT NULL);
CREATE TABLE login_throttle (
  key TEXT PRIMARY KEY, failures {INT} NOT NULL DEFAULT 0, window_start {INT} NOT NULL DEFAULT 0,
  blocked_until {INT} NOT NULL DEFAULT 0, strikes {INT} NOT NULL DEFAULT 0, expires_at {INT} NOT NULL);
CREATE INDEX login_throttle_expires ON login_throttle (expires_at);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family);
INSERT INTO audit_anchor (id, last_id, last_hash, row_count, mac, updated_at)
  SELECT 1, id, hash, (SELECT COUNT(*) FROM audit_log), '', ts FROM audit_log ORDER BY id DESC LIMIT 1;
)SQL";

// v6: the egress TLS listener (docs/control-plane.md). A cluster may name a server certificate; its
// egress proxies then also listen with TLS at egress_tls_address (an HTTPS proxy whose clients may
// present CA-issued client certificates, CN = service). The address is kept when the certificate is
// cleared, so switching TLS off and on again keeps the port. Independent of 3, 4 and 5.
constexpr const char* kV6EgressTls = R"SQL(
ALTER TABLE clusters ADD COLUMN egress_tls_certificate_id {INT} REFERENCES certificates(id) ON DELETE RESTRICT;
ALTER TABLE clusters ADD COLUMN egress_tls_address TEXT NOT NULL DEFAULT '127.0.0.1:3129';
)SQL";

// v7: L4 port forwards compiled into egress snapshots (docs/egress.md "Port forwards",
// docs/control-plane.md), and the SOCKS5-over-TLS listener address (empty = no such listener; it
// needs egress_tls_certificate_id too). A forward's destination is a "host:port" text or a service
// (destination_service_id, whose ip_fqdn is one host) with destination_port; `sources` is a JSON array
// of {cidr, service_id}; `mtls` identifies callers by client certificate (tcp only). Independent of 3-6
// apart from the columns it adds to clusters.
constexpr const char* kV7Forwards = R"SQL(
CREATE TABLE forwards (
  id {ID}, cluster_id {INT} NOT NULL REFERENCES clusters(id) ON DELETE RESTRICT,
  name TEXT NOT NULL, protocol TEXT NOT NULL DEFAULT 'tcp' CHECK (protocol IN ('tcp', 'udp')),
  listen_address TEXT NOT NULL, destination TEXT NOT NULL DEFAULT '',
  destination_service_id {INT} REFERENCES services(id) ON DELETE RESTRICT, destination_port {INT},
  sources TEXT NOT NULL DEFAULT '[]', mtls INTEGER NOT NULL DEFAULT 0, idle_timeout_seconds {INT} NOT NULL DEFAULT 0,
  enabled INTEGER NOT NULL DEFAULT 1, comment TEXT NOT NULL DEFAULT '',
  created_at TEXT NOT NULL, updated_at TEXT NOT NULL, version {INT} NOT NULL DEFAULT 1,
  UNIQUE (cluster_id, name));
CREATE INDEX forwards_cluster ON forwards (cluster_id);
ALTER TABLE clusters ADD COLUMN egress_socks_tls_address TEXT NOT NULL DEFAULT '';
)SQL";

// v8: what the manager checks forwards against. egress_admin_address: where the cluster's egress
// proxies serve /metrics and /ready (the `marchproxy egress` default; not compiled into snapshots: set
// it when they run with --admin elsewhere), so no forward takes that port. forward_source_networks:
// a JSON array of CIDRs an admin allows service owners to name in a forward's sources (empty: none).
// Independent of 3-7 apart from the table it alters.
constexpr const char* kV8ForwardGuards = R"SQL(
ALTER TABLE clusters ADD COLUMN egress_admin_address TEXT NOT NULL DEFAULT '127.0.0.1:9902';
ALTER TABLE clusters ADD COLUMN forward_source_networks TEXT NOT NULL DEFAULT '[]';
)SQL";

std::string expand(std::string sql, Dialect d) {
  auto replaceAll = [&](const std::string& from, const std::string& to) {
    for (std::size_t p = 0; (p = sql.find(from, p)) != std::string::npos; p += to.size()) sql.replace(p, from.size(), to);
  };
  replaceAll("{ID}", d == Dialect::sqlite ? "INTEGER PRIMARY KEY AUTOINCREMENT" : "BIGSERIAL PRIMARY KEY");
  replaceAll("{INT}", d == Dialect::sqlite ? "INTEGER" : "BIGINT");
  return sql;
}

struct Migration {
  int version;
  std::string sqlite, postgres;
};

const std::vector<Migration>& migrations() {
  static const std::vector<Migration> list = {
      {1, expand(kV1Tables, Dialect::sqlite) + kV1SqliteTriggers,
       expand(kV1Tables, Dialect::postgres) + kV1PostgresTriggers},
      {2, expand(kV2Certificates, Dialect::sqlite), expand(kV2Certificates, Dialect::postgres)},
      // Kept sorted by version; a number a database lacks (it ran a binary without that
      // migration) is applied by migrate() when it appears.
      {3, kV3Control, kV3Control},
      // 4 (certificate serials) does not depend on 3 (control loop).
      {4, expand(kV4CertificateSerials, Dialect::sqlite), expand(kV4CertificateSerials, Dialect::postgres)},
      {5, expand(kV5Security, Dialect::sqlite), expand(kV5Security, Dialect::postgres)},
      {6, expand(kV6EgressTls, Dialect::sqlite), expand(kV6EgressTls, Dialect::postgres)},
      {7, expand(kV7Forwards, Dialect::sqlite), expand(kV7Forwards, Dialect::postgres)},
      {8, kV8ForwardGuards, kV8ForwardGuards},
  };
  return list;
}

}  // namespace

int latestSchemaVersion() { return migrations().back().version; }

int migrate(Db& db) {
  return db.write([&](Conn& c) {
    c.script("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_at TEXT NOT NULL)");
    auto rows = c.exec("SELECT MAX(version) AS v FROM schema_version");
    int current = static_cast<int>(rows.front().i64("v"));
    if (current > latestSchemaVersion())
      throw SchemaTooNew("database schema version " + std::to_string(current) + " is newer than this binary knows (" +
                         std::to_string(latestSchemaVersion()) + "); upgrade marchproxy before starting the manager");
    // Applied by set, not by maximum: migrations are written on parallel branches (3 for the
    // control loop, 4 for certificate serials), so a database may have 4 before its binary knows 3.
    // Every migration is independent of the ones with numbers between it and its base.
    std::vector<int> applied;
    for (const auto& r : c.exec("SELECT version FROM schema_version").rows) applied.push_back(static_cast<int>(r.i64("version")));
    for (const auto& m : migrations()) {
      if (std::find(applied.begin(), applied.end(), m.version) != applied.end()) continue;
      c.script(db.dialect() == Dialect::sqlite ? m.sqlite : m.postgres);
      c.exec("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
             {std::to_string(m.version), util::nowIso()});
    }
    return current;
  });
}

}  // namespace marchproxy::manager::store
