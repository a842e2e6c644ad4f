#include "manager/manager.h"

#ifdef __GLIBC__
#include <malloc.h>
#endif

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <thread>
#include <fstream>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <sstream>

#include "manager/api/context.h"
#include "manager/api/events.h"
#include "manager/audit/audit.h"
#include "manager/auth/keyring.h"
#include "manager/ca/authority.h"
#include "manager/license/license.h"
#include "manager/license/vendor_key.h"
#include "manager/control/service.h"
#include "manager/crypto/crypto.h"
#include "manager/http/server.h"
#include "manager/http/static_files.h"
#include "manager/store/migrations.h"
#include "manager/util/time.h"

namespace marchproxy::manager {

std::string resolveOptions(Options& o) {
  auto env = [](const char* name) -> std::string {
    const char* v = std::getenv(name);
    return v ? v : "";
  };
  auto fill = [](std::string& field, const std::string& value) {
    if (field.empty()) field = value;
  };
  if (o.config_file.empty()) o.config_file = env("MARCHPROXY_MANAGER_CONFIG");
  fill(o.listen, env("MARCHPROXY_LISTEN"));
  fill(o.tls_cert, env("MARCHPROXY_TLS_CERT"));
  fill(o.tls_key, env("MARCHPROXY_TLS_KEY"));
  fill(o.database_url, env("MARCHPROXY_DATABASE_URL"));
  fill(o.data_dir, env("MARCHPROXY_DATA_DIR"));
  fill(o.master_key_file, env("MARCHPROXY_MASTER_KEY_FILE"));
  fill(o.control_listen, env("MARCHPROXY_CONTROL_LISTEN"));
  fill(o.control_hosts, env("MARCHPROXY_CONTROL_HOSTS"));
  fill(o.license_file, env("MARCHPROXY_LICENSE_FILE"));
  fill(o.license_public_key, env("MARCHPROXY_LICENSE_PUBLIC_KEY"));
  fill(o.license_server, env("MARCHPROXY_LICENSE_SERVER"));
  fill(o.ui_dir, env("MARCHPROXY_UI_DIR"));
  if (!o.config_file.empty()) {
    std::ifstream in(o.config_file);
    if (!in) return "config file " + o.config_file + ": cannot read";
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::parse_error& e) {
      return "config file " + o.config_file + ": " + e.what();
    }
    if (!j.is_object()) return "config file " + o.config_file + ": expected a JSON object";
    for (const auto& [k, v] : j.items()) {
      std::string* dst = k == "listen"            ? &o.listen
                         : k == "tls_cert"        ? &o.tls_cert
                         : k == "tls_key"         ? &o.tls_key
                         : k == "database_url"    ? &o.database_url
                         : k == "data_dir"        ? &o.data_dir
                         : k == "master_key_file" ? &o.master_key_file
                         : k == "control_listen"  ? &o.control_listen
                         : k == "control_hosts"   ? &o.control_hosts
                         : k == "license_file"    ? &o.license_file
                         : k == "license_public_key" ? &o.license_public_key
                         : k == "license_server"  ? &o.license_server
                         : k == "ui_dir"          ? &o.ui_dir
                                                  : nullptr;
      int* num = k == "pool_size"            ? &o.pool_size
                 : k == "heartbeat_interval" ? &o.heartbeat_interval
                 : k == "cert_renew_days"    ? &o.cert_renew_days
                 : k == "license_grace_days" ? &o.license_grace_days
                                             : nullptr;
      if (k == "ca_intermediate") {
        if (!v.is_boolean()) return "config file " + o.config_file + ": " + k + ": expected a boolean";
        o.ca_intermediate = o.ca_intermediate || v.get<bool>();
        continue;
      }
      if (num) {
        if (!v.is_number_integer()) return "config file " + o.config_file + ": " + k + ": expected an integer";
        if (*num == 0) *num = v.get<int>();
        continue;
      }
      if (!dst) return "config file " + o.config_file + ": " + k + ": unknown field";
      if (!v.is_string()) return "config file " + o.config_file + ": " + k + ": expected a string";
      fill(*dst, v.get<std::string>());
    }
  }
  fill(o.listen, "127.0.0.1:8000");
  fill(o.data_dir, "marchproxy-data");
  fill(o.database_url, "sqlite://" + o.data_dir + "/manager.db");
  if (o.pool_size == 0) o.pool_size = 8;
  if (o.ui_dir.empty()) o.ui_dir = http::defaultUiDir();
  if (o.ui_dir == "-") o.ui_dir.clear();
  if (o.pool_size < 1 || o.pool_size > 256) return "pool-size: must be 1-256";
  fill(o.control_listen, "127.0.0.1:8443");
  if (o.control_hosts.empty()) {
    char host[256] = {0};
    o.control_hosts = "localhost,127.0.0.1,::1";
    if (::gethostname(host, sizeof host - 1) == 0 && *host && std::string(host) != "localhost")
      o.control_hosts += std::string(",") + host;
  }
  if (o.heartbeat_interval == 0) o.heartbeat_interval = 30;
  if (o.heartbeat_interval < 1 || o.heartbeat_interval > 3600) return "heartbeat-interval: must be 1-3600 seconds";
  if (o.cert_renew_days == 0) o.cert_renew_days = 30;
  if (o.cert_renew_days < 1 || o.cert_renew_days > 365) return "cert-renew-days: must be 1-365";
  // 0: the grace period signed into the licence; otherwise at most that many days (never more).
  if (o.license_grace_days < 0 || o.license_grace_days > 365) return "license-grace-days: must be 0-365";
  if (!o.license_public_key.empty() && !license::kPublicKeyOverrideAllowed)
    return "license-public-key: this build verifies licences only against the MarchProxy key built into it; "
           "the option exists in test builds (-DMP_LICENSE_TEST_KEYS=ON) only (see docs/licensing.md)";
  if (!o.license_server.empty() && o.license_server.rfind("http://", 0) != 0 &&
      o.license_server.rfind("https://", 0) != 0)
    return "license-server: expected an http:// or https:// URL";
  return "";
}

namespace {

void bootstrapAdmin(store::Db& db, int cost) {
  bool empty = db.read([](store::Conn& c) { return c.exec("SELECT COUNT(*) AS n FROM users").front().i64("n") == 0; });
  if (!empty) return;
  const char* envpw = std::getenv("MARCHPROXY_ADMIN_PASSWORD");
  std::string password = envpw && *envpw ? envpw : crypto::base64urlEncode(crypto::randomBytes(18));
  if (password.size() < 12) throw std::runtime_error("MARCHPROXY_ADMIN_PASSWORD: must be at least 12 characters");
  std::string hash = crypto::hashPassword(password, cost);
  bool created = db.write([&](store::Conn& c) {
    if (c.exec("SELECT COUNT(*) AS n FROM users").front().i64("n") != 0) return false;  // another manager won
    std::string now = util::nowIso();
    c.exec("INSERT INTO users (username, password_hash, role, created_at, updated_at) VALUES ('admin', ?, 'admin', ?, ?)",
           {hash, now, now});
    audit::append(c, {"-", "-", "user.bootstrap", "users/admin", "created the first admin user", "success"});
    return true;
  });
  if (!created) return;
  if (envpw && *envpw)
    spdlog::warn("manager: created user \"admin\" with the password from MARCHPROXY_ADMIN_PASSWORD");
  else
    spdlog::warn("manager: created user \"admin\" with password: {} (shown once; change it after the first login)",
                 password);
}

// The licence public key option names a file or holds the key itself (PEM or base64).
std::string licensePublicKey(const std::string& value) {
  if (value.empty() || value.rfind("-----BEGIN", 0) == 0) return value;
  std::ifstream in(value);
  if (!in) return value;
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Runs `fn` at once and then every `interval` until destroyed, on a thread of its own; an exception
// is logged and the next round runs as usual.
class Periodic {
 public:
  Periodic(const char* what, std::chrono::milliseconds interval, std::function<void()> fn)
      : thread_([this, what, interval, fn = std::move(fn)] {
          std::unique_lock l(mu_);
          while (!stop_) {
            l.unlock();
            try {
              fn();
            } catch (const std::exception& e) {
              spdlog::error("{}: {}", what, e.what());
            }
            l.lock();
            cv_.wait_for(l, interval, [this] { return stop_; });
          }
        }) {}
  ~Periodic() {
    {
      std::lock_guard l(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

// The control listener's certificate: issued by the CA for --control-hosts and kept in the
// certificates table as "manager-control"; re-issued when the hosts change, it is revoked, or it
// expires within 30 days (the CA's renewal also re-issues it; the running listener picks up a new
// one within 2 s: see the watcher in run()).
std::pair<std::string, std::string> controlCertificate(store::Db& db, const auth::KeyRing& keys, ca::Authority& ca,
                                                       const std::string& hosts_csv) {
  std::vector<std::string> sans;
  for (std::size_t i = 0; i <= hosts_csv.size();) {
    auto j = std::min(hosts_csv.find(',', i), hosts_csv.size());
    std::string h = hosts_csv.substr(i, j - i);
    while (!h.empty() && h.front() == ' ') h.erase(0, 1);
    while (!h.empty() && h.back() == ' ') h.pop_back();
    if (!h.empty()) sans.push_back(h);
    i = j + 1;
  }
  if (sans.empty()) throw std::runtime_error("control-hosts: at least one name or address is needed");
  std::string want = nlohmann::json(sans).dump();
  std::string soon = util::isoFromUnixMs((util::unixNow() + 30 * 86400) * 1000);
  return db.write([&](store::Conn& c) {
    auto rows = c.exec("SELECT id, cert_pem, key_enc, not_after, revoked_at, description FROM certificates WHERE name = "
                       "'manager-control'");
    if (!rows.empty()) {
      const auto& r = rows.front();
      auto key = keys.open(r.str("key_enc"), "certificates.key");
      if (key && r.isNull("revoked_at") && r.str("not_after") > soon && r.str("description") == want)
        return std::make_pair(r.str("cert_pem"), *key);
      ca.revoke(c, ca::parseCertificate(r.str("cert_pem")).value_or(ca::CertFacts{}).serial, "superseded");
      c.exec("DELETE FROM certificates WHERE id = ?", {r.str("id")});
    }
    auto issued = ca.issueServer(c, "manager-control", sans, 365);
    c.exec("UPDATE certificates SET description = ? WHERE id = ?", {want, std::to_string(issued.certificate_id)});
    return std::make_pair(issued.cert_pem, issued.key_pem);
  });
}

}  // namespace

int run(Options opts) {
#ifdef __GLIBC__
  // A page of 1,000 items is a ~300 KiB response body built by doubling. With glibc's defaults such blocks
  // are mmapped and unmapped, or trimmed off the heap top, on every request, and each then page-faults
  // afresh (a third of the manager's CPU on 1,000-item reads; p50 22 -> 13 ms). Keep them in the heap.
  ::mallopt(M_MMAP_THRESHOLD, 32 << 20);
  ::mallopt(M_TRIM_THRESHOLD, 64 << 20);
#endif
  if (auto err = resolveOptions(opts); !err.empty()) {
    spdlog::error("manager: {}", err);
    return 2;
  }
  try {
    ::mkdir(opts.data_dir.c_str(), 0700);
    std::string master = auth::loadMasterKey(opts.master_key_file, opts.data_dir);
    auto db = store::Db::open(opts.database_url, static_cast<std::size_t>(opts.pool_size));
    int before = store::migrate(*db);
    if (before != store::latestSchemaVersion())
      spdlog::info("manager: database schema migrated from version {} to {}", before, store::latestSchemaVersion());
    audit::setAnchorKey(master);
    if (before < 5) audit::sealAnchor(*db);  // the v5 migration anchored an existing log without the key
    auth::KeyRing keys(master);
    keys.load(*db);
    Metrics metrics;
    ca::Authority authority(*db, keys);
    if (!opts.license_public_key.empty())
      spdlog::warn("license: TEST BUILD: licences are verified against --license-public-key instead of the "
                   "MarchProxy key (built with MP_LICENSE_TEST_KEYS; never run such a build in production)");
    license::Licensing licensing(opts.license_file,
                                 opts.license_public_key.empty() ? std::string(license::kVendorPublicKey)
                                                                 : licensePublicKey(opts.license_public_key),
                                 opts.license_grace_days);
    // The latest time seen survives restarts: a clock set back does not revive an expired licence.
    licensing.raiseLastSeen(license::loadLastSeen(*db, keys));
    Periodic license_clock("license: cannot store the last-seen time", std::chrono::minutes(1),
                           [&] { license::saveLastSeen(*db, keys, licensing.lastSeen()); });
    std::unique_ptr<license::OnlineCheck> online;
    if (!opts.license_server.empty()) online = std::make_unique<license::OnlineCheck>(licensing, opts.license_server);
    api::App app(*db, keys, metrics);
    app.openapi = openapiDocument();
    app.ca = &authority;
    app.license = &licensing;
    // Re-issues expiring certificates at start-up and then every hour.
    Periodic renewal("ca: renewal check failed", std::chrono::hours(1), [&authority, days = opts.cert_renew_days] {
      auto done = authority.renewExpiring(days);
      if (!done.empty()) spdlog::info("ca: renewed {} certificate(s) expiring within {} days", done.size(), days);
    });
    if (opts.ca_intermediate && !authority.hasIntermediate()) {
      // Never fatal: without the licence feature the root keeps issuing.
      if (licensing.hasFeature("intermediate-ca")) {
        authority.createIntermediate();
        spdlog::info("ca: created the intermediate CA (--ca-intermediate); new certificates are issued by it");
      } else {
        spdlog::error("ca: --ca-intermediate needs an enterprise licence with the feature \"intermediate-ca\" "
                      "(see docs/licensing.md); the root CA keeps issuing");
      }
    }
    bootstrapAdmin(*db, app.bcrypt_cost);
    http::Router router = api::buildRouter(app);
    control::Options co;
    co.heartbeat_interval_s = opts.heartbeat_interval;
    co.poll_database = db->dialect() == store::Dialect::postgres;
    control::Service control(app, authority, &licensing, co);
    app.on_config_write = [&control] { control.notifier().changed(); };
    metrics.addSource([&control] { return control.metricsText(); });
    control.addApiRoutes(router);
    http::Router control_router;
    control.addControlRoutes(control_router);
    http::StaticFiles ui(opts.ui_dir);
    if (ui.dir().empty())
      spdlog::warn("manager: web UI not served (no built UI found{}; see docs/web-ui.md)",
                   opts.ui_dir.empty() ? "" : " in " + opts.ui_dir);

    http::ServerOptions so;
    so.listen = opts.listen;
    so.tls_cert = opts.tls_cert;
    so.tls_key = opts.tls_key;
    auto dispatch = [&](const http::Router& router, bool with_ui, http::Request& req) {
      auto t0 = std::chrono::steady_clock::now();
      http::Response resp;
      std::string route = "unmatched";
      try {
        const auto& r = router.match(req);
        route = r.pattern;
        resp = r.handler(req);
      } catch (const http::ApiError& e) {
        resp = http::problem(e, req.path);
        if (e.status == 404 && with_ui) {  // not an API route: the web UI's files and client-side routes
          try {
            if (auto file = ui.serve(req)) {
              route = "ui";
              resp = std::move(*file);
            }
          } catch (const http::ApiError& e2) {
            resp = http::problem(e2, req.path);
          }
        }
      } catch (const store::DbError& e) {
        spdlog::error("manager: {} {}: {}", req.method, req.path, e.what());
        bool down = e.kind == store::DbError::Kind::unavailable || e.kind == store::DbError::Kind::busy;
        resp = http::problem(http::ApiError(down ? 503 : 500, down ? "database-unavailable" : "internal-error",
                                            down ? "the database is unavailable; retry later" : "internal error"),
                             req.path);
      } catch (const std::exception& e) {
        spdlog::error("manager: {} {}: {}", req.method, req.path, e.what());
        resp = http::problem(http::ApiError(500, "internal-error", "internal error"), req.path);
      }
      double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      metrics.request(route, req.method, resp.status, secs);
      spdlog::debug("manager: {} {} {} {:.1f}ms", req.method, req.path, resp.status, secs * 1000);
      return resp;
    };
    http::Server server(so, [&](http::Request& req) { return dispatch(router, true, req); });
    server.onUpgrade("/api/v1/events", [&app](http::Request& req) { return api::openEventStream(app, req); });
    // The control listener: always TLS with a certificate from the CA, client certificates
    // requested and verified against it (docs/control-protocol.md). No web UI there.
    auto [control_cert, control_key] = controlCertificate(*db, keys, authority, opts.control_hosts);
    http::ServerOptions cso;
    cso.listen = opts.control_listen;
    cso.tls_cert_pem = control_cert + authority.chainPem();
    cso.tls_key_pem = control_key;
    cso.client_ca_pem = authority.chainPem();
    cso.max_connections = 4096;  // one per long-polling proxy
    cso.idle_timeout_s = 120;
    http::Server control_server(cso, [&](http::Request& req) { return dispatch(control_router, false, req); });
    control_server.bind();
    spdlog::info("listening: listener=control address={}:{} tls=on mtls=on hosts={}",
                 opts.control_listen.substr(0, opts.control_listen.rfind(':')), control_server.port(),
                 opts.control_hosts);
    server.bind();
    metrics.addSource([&control_server] {
      return fmt::format(
          "# HELP marchproxy_manager_control_tls_handshakes_total TLS handshakes on the control listener, by whether "
          "a session was resumed.\n# TYPE marchproxy_manager_control_tls_handshakes_total counter\n"
          "marchproxy_manager_control_tls_handshakes_total{{resumed=\"false\"}} {}\n"
          "marchproxy_manager_control_tls_handshakes_total{{resumed=\"true\"}} {}\n",
          control_server.tlsHandshakes() - control_server.tlsResumed(), control_server.tlsResumed());
    });
    std::thread control_thread([&] { control_server.run(); });
    // A renewed (or revoked and re-issued) listener certificate, or a new CA chain (also one another
    // manager on the same database created), is served to new connections without a restart; open
    // ones keep theirs. Two small reads every 2 s.
    std::string served_cert = control_cert, served_chain = authority.chainPem();
    Periodic control_tls("control listener: certificate reload failed", std::chrono::seconds(2), [&] {
      authority.refresh();  // another manager on this database may have created the intermediate (M3)
      auto rows = db->read([](store::Conn& c) {
        return c.exec("SELECT cert_pem, revoked_at FROM certificates WHERE name = 'manager-control'");
      });
      std::string chain = authority.chainPem();
      if (!rows.empty() && rows.front().str("cert_pem") == served_cert && rows.front().isNull("revoked_at") &&
          chain == served_chain)
        return;
      auto [cert, key] = controlCertificate(*db, keys, authority, opts.control_hosts);
      control_server.reloadTls(cert + chain, key, chain);
      auto facts = ca::parseCertificate(cert);
      spdlog::info("control listener: now serving certificate {} (valid until {})", facts ? facts->serial : "?",
                   facts ? facts->not_after : "?");
      served_cert = cert;
      served_chain = chain;
    });
    spdlog::info("listening: listener=manager address={}:{} tls={} database={} ui={}",
                 opts.listen.substr(0, opts.listen.rfind(':')), server.port(), server.tls() ? "on" : "off",
                 db->dialect() == store::Dialect::sqlite ? "sqlite" : "postgres", ui.dir().empty() ? "off" : ui.dir());
    server.run();
    control.notifier().shutdown();  // waiting long-polls answer 304 now
    control_server.stop();
    control_thread.join();
    return 0;
  } catch (const store::SchemaTooNew& e) {
    spdlog::error("manager: {}", e.what());
    return 1;
  } catch (const std::exception& e) {
    spdlog::error("manager: {}", e.what());
    return 1;
  }
}

}  // namespace marchproxy::manager
