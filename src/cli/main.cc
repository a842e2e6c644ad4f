// The `marchproxy` binary: up | ingress | egress | manager | check | license | xdp status | version
// (+ demo-upstream).
#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <unistd.h>

#include "common/base/log.h"
#include "config/loader.h"
#include "config/writer.h"
#include "fastpath/inspect.h"
#include "ingress/ingress.h"
#include "manager/license/license.h"
#include "manager/manager.h"
#include "egress/config.h"
#include "egress/server.h"
#include <fstream>
#include <sstream>
#include "proxy/limits/redis_client.h"
#include "proxy/tls/server_contexts.h"
#include "up/up.h"

#ifndef MP_VERSION
#define MP_VERSION "dev"
#endif

namespace {

// The proxies (ingress, egress) run with a larger glibc tcache: 128 free blocks per size class
// instead of 7. With ~100 requests in flight per worker (HTTP/2 streams, coroutine frames) the
// default tcache overflows and most malloc/free pairs take glibc's slow path (_int_malloc,
// _int_free): −1.9k instructions per HTTP/2 request (bench/results/callgrind-h2-20261203-3.md).
// The setting is read by the dynamic loader only, from GLIBC_TUNABLES, so the process re-executes
// itself once with it (same pid, argv and file descriptors). An operator's own GLIBC_TUNABLES wins,
// and MARCHPROXY_MALLOC_TUNING (any value, e.g. off) keeps glibc's defaults. Not under sanitizers (own allocator).
void tuneAllocator(int argc, char** argv) {
#if defined(__GLIBC__) && !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
  if (std::getenv("GLIBC_TUNABLES") != nullptr) return;
  // "off": the operator opted out; "done": this is the re-executed image (glibc may drop
  // GLIBC_TUNABLES from the environment of a privileged, AT_SECURE process: never exec twice).
  if (std::getenv("MARCHPROXY_MALLOC_TUNING") != nullptr) return;
  bool proxy = false;
  for (int i = 1; i < argc && !proxy; ++i)
    proxy = std::string_view(argv[i]) == "ingress" || std::string_view(argv[i]) == "egress";
  if (!proxy) return;
  // The binary's own path, not /proc/self/exe itself (a tool such as valgrind runs the program
  // under another executable and answers this readlink with the program's path).
  char self[4096];
  const ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return;  // no /proc: run as is
  self[n] = '\0';
  if (::setenv("MARCHPROXY_MALLOC_TUNING", "done", 1) != 0) return;
  if (::setenv("GLIBC_TUNABLES", "glibc.malloc.tcache_count=128", 1) != 0) return;
  ::execv(self, argv);
  ::unsetenv("GLIBC_TUNABLES");  // exec failed: run as is
#else
  (void)argc;
  (void)argv;
#endif
}

// The flags that run a proxy under a manager (src/control), the same for ingress and egress.
void addManagerFlags(CLI::App* sub, marchproxy::control::AgentOptions& o) {
  auto* g = sub->add_option_group("manager", "Get the config from a manager instead of --config (docs/operations.md)");
  g->add_option("--manager", o.manager_url, "Manager control URL, e.g. https://manager:8443");
  g->add_option("--cluster-key-file", o.cluster_key_file,
                "File holding the cluster key (or set MARCHPROXY_CLUSTER_KEY); used to register");
  g->add_option("--cluster-key", o.cluster_key, "The cluster key itself (visible in ps: prefer the file or env)");
  g->add_option("--name", o.name, "Proxy name, unique in the cluster (default: <host name>-<kind>)");
  g->add_option("--state-dir", o.state_dir, "Identity and cached snapshots (default ./marchproxy-<kind>-state)");
  g->add_option("--manager-ca", o.manager_ca, "CA certificate of the manager's control listener (PEM)");
  g->add_option("--bind", o.binds, "Override a listener's address: NAME=ADDR:PORT (repeatable)");
  g->add_option("--admin", o.admin, "Override the admin endpoint's address: ADDR:PORT");
}

// --config xor --manager; fills the agent options. Returns false (error printed) when unusable.
bool resolveSource(const char* kind, const std::string& config_path,
                   std::optional<marchproxy::control::AgentOptions>& out, marchproxy::control::AgentOptions o) {
  const bool manager_flags = !o.cluster_key.empty() || !o.cluster_key_file.empty() || !o.name.empty() ||
                             !o.state_dir.empty() || !o.manager_ca.empty() || !o.binds.empty() || !o.admin.empty();
  if (!config_path.empty() && !o.manager_url.empty()) {
    std::fprintf(stderr, "%s: --config and --manager are mutually exclusive: the config comes either from a file or "
                 "from the manager\n", kind);
    return false;
  }
  if (config_path.empty() && o.manager_url.empty()) {
    std::fprintf(stderr, "%s: give --config FILE or --manager URL\n", kind);
    return false;
  }
  if (!config_path.empty()) {
    if (manager_flags) {
      std::fprintf(stderr, "%s: --cluster-key*, --name, --state-dir, --manager-ca, --bind and --admin need --manager\n",
                   kind);
      return false;
    }
    return true;
  }
  o.kind = kind;
  o.version = MP_VERSION;
  auto ok = o.finish();
  if (!ok) {
    std::fprintf(stderr, "%s: %s\n", kind, ok.error().message.c_str());
    return false;
  }
  out = std::move(o);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  tuneAllocator(argc, argv);
  marchproxy::log::init();
  CLI::App app{"MarchProxy: ingress reverse proxy and egress forward proxy"};
  app.require_subcommand(1);
  app.fallthrough();  // global options such as --log-level may also follow the subcommand
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace|debug|info|warn|error|off");

  marchproxy::ingress::Options ingress_opts;
  auto* ingress = app.add_subcommand("ingress", "Run the ingress reverse proxy");
  ingress->add_option("-c,--config", ingress_opts.config_path, "YAML or JSON config file");
  ingress->add_flag("!--no-watch", ingress_opts.watch, "Reload only on SIGHUP, not on file change");
  marchproxy::control::AgentOptions ingress_manager;
  addManagerFlags(ingress, ingress_manager);

  marchproxy::egress::Options egress_opts;
  auto* egress = app.add_subcommand("egress", "Run the egress forward proxy (HTTP, CONNECT, SOCKS5)");
  egress->add_option("-c,--config", egress_opts.config_path, "YAML or JSON egress config file (kind: egress)");
  egress->add_flag("!--no-watch", egress_opts.watch, "Reload only on SIGHUP, not on file change");
  marchproxy::control::AgentOptions egress_manager;
  addManagerFlags(egress, egress_manager);

  std::string check_path;
  auto* check = app.add_subcommand("check", "Validate a config file; print every error with its line and field");
  check->add_option("file", check_path, "YAML or JSON config file")->required();

  marchproxy::manager::Options manager_opts;
  auto* manager = app.add_subcommand("manager", "Run the manager REST API (see docs/manager.md)");
  manager->add_option("--config", manager_opts.config_file, "Optional JSON file with the same keys as the flags");
  manager->add_option("--listen", manager_opts.listen, "host:port to serve on (default 127.0.0.1:8000)");
  manager->add_option("--tls-cert", manager_opts.tls_cert, "PEM certificate chain; with --tls-key serves HTTPS");
  manager->add_option("--tls-key", manager_opts.tls_key, "PEM private key");
  manager->add_option("--database-url", manager_opts.database_url,
                      "sqlite:///path/file.db or postgres://user@host:port/db (default: <data-dir>/manager.db)");
  manager->add_option("--data-dir", manager_opts.data_dir, "Directory for the SQLite file and a generated master key");
  manager->add_option("--master-key-file", manager_opts.master_key_file, "File with the 32-byte master key");
  manager->add_option("--pool-size", manager_opts.pool_size, "Database connections (default 8)");
  manager->add_option("--cert-renew-days", manager_opts.cert_renew_days,
                      "Re-issue certificates MarchProxy issued when they expire within this many days (default 30)");
  manager->add_flag("--ca-intermediate", manager_opts.ca_intermediate,
                    "Create an intermediate CA below the root if there is none (enterprise feature intermediate-ca)");
  manager->add_option("--license-file", manager_opts.license_file,
                      "Enterprise licence file (env MARCHPROXY_LICENSE_FILE; see docs/licensing.md)");
  manager->add_option("--license-public-key", manager_opts.license_public_key,
                      "TEST BUILDS ONLY (MP_LICENSE_TEST_KEYS): Ed25519 key replacing the built-in licence key "
                      "(env MARCHPROXY_LICENSE_PUBLIC_KEY: file or key)");
  manager->add_option("--license-server", manager_opts.license_server,
                      "Optional online licence validation URL (off by default; failures only log)");
  manager->add_option("--license-grace-days", manager_opts.license_grace_days,
                      "At most this many grace days after expiry (default: the licence's own, signed in it)");
  manager->add_option("--control-listen", manager_opts.control_listen,
                      "host:port of the mTLS control listener proxies use (default 127.0.0.1:8443)");
  manager->add_option("--control-hosts", manager_opts.control_hosts,
                      "Names and IPs in the control listener's certificate (default localhost,127.0.0.1,::1,<hostname>)");
  manager->add_option("--heartbeat-interval", manager_opts.heartbeat_interval,
                      "Seconds between proxy heartbeats; stale after 3 missed (default 30)");

  auto* license = app.add_subcommand("license", "Developer commands for licence files (see docs/licensing.md)");
  license->require_subcommand(1);
  std::string lic_out_private, lic_out_public;
  auto* license_keygen = license->add_subcommand("keygen", "Create an Ed25519 key pair for signing licences");
  license_keygen->add_option("--out-private", lic_out_private, "Private key file to write (0600)")->required();
  license_keygen->add_option("--out-public", lic_out_public, "Public key file to write")->required();
  std::string lic_key, lic_out, lic_features;
  marchproxy::manager::license::Payload lic_payload;
  auto* license_issue = license->add_subcommand("issue", "Sign a licence file");
  license_issue->add_option("--key", lic_key, "Ed25519 private key (PEM file)")->required();
  license_issue->add_option("--customer", lic_payload.customer, "Customer name")->required();
  license_issue->add_option("--max-proxies", lic_payload.max_proxies, "Proxy limit")->required();
  license_issue->add_option("--features", lic_features, "Comma-separated enterprise features (e.g. intermediate-ca)");
  license_issue->add_option("--expires", lic_payload.expires_at, "Expiry: YYYY-MM-DD (end of day, UTC) or ISO-8601")
      ->required();
  license_issue->add_option("--issued-at", lic_payload.issued_at, "Issue time (default now)");
  license_issue->add_option("--grace-days", lic_payload.grace_days,
                            "Days enterprise limits stay after expiry, signed into the licence (default 14)");
  license_issue->add_option("--out", lic_out, "Write here instead of standard output");

  marchproxy::up::Options up_opts;
  auto* up = app.add_subcommand("up", "Run the whole system on this machine: manager + web UI, ingress, egress, demo upstream");
  up->add_option("--data-dir", up_opts.data_dir, "Where the manager's database, keys, proxy state and logs live")
      ->capture_default_str();
  up->add_option("--host", up_opts.host, "Address every part listens on")->capture_default_str();
  up->add_option("--manager-port", up_opts.manager_port, "Manager API and web UI")->capture_default_str();
  up->add_option("--control-port", up_opts.control_port, "Manager control listener (proxies, mTLS)")->capture_default_str();
  up->add_option("--ingress-port", up_opts.ingress_port, "Ingress HTTP listener")->capture_default_str();
  up->add_option("--ingress-admin-port", up_opts.ingress_admin_port, "Ingress /metrics /ready")->capture_default_str();
  up->add_option("--egress-port", up_opts.egress_port, "Egress HTTP/CONNECT listener")->capture_default_str();
  up->add_option("--socks-port", up_opts.socks_port, "Egress SOCKS5 listener")->capture_default_str();
  up->add_option("--egress-admin-port", up_opts.egress_admin_port, "Egress /metrics /ready")->capture_default_str();
  up->add_option("--demo-port", up_opts.demo_port, "Demo upstream")->capture_default_str();
  up->add_option("--ui-dir", up_opts.ui_dir, "Built web UI to serve (default: the manager's)");
  up->add_option("--ready-timeout", up_opts.ready_timeout_s, "Seconds to wait for each part")->capture_default_str();

  std::string demo_listen = "127.0.0.1:9001", demo_name = "demo";
  auto* demo = app.add_subcommand("demo-upstream", "A tiny HTTP server that names itself (what `up` routes to)");
  demo->add_option("--listen", demo_listen, "HOST:PORT")->capture_default_str();
  demo->add_option("--name", demo_name, "Name it answers with")->capture_default_str();
  manager->add_option("--ui-dir", manager_opts.ui_dir,
                      "Built web UI to serve (default: ./web/dist or the repository's web/dist; - = none)");

  auto* xdp = app.add_subcommand("xdp", "The XDP/TC fast path");
  xdp->require_subcommand(1);
  auto* xdp_status = xdp->add_subcommand(
      "status", "Show where the fast path is attached (this network namespace), in which mode, and its counters");

  auto* version = app.add_subcommand("version", "Print the version");
  CLI11_PARSE(app, argc, argv);
  if (!marchproxy::log::setLevel(log_level)) {
    std::fprintf(stderr, "--log-level: unknown level \"%s\"\n", log_level.c_str());
    return 2;
  }
  if (*version) {
    std::printf("marchproxy %s\n", MP_VERSION);
    return 0;
  }
  if (*check) {
    {  // an egress config says so at the top level (kind: egress)
      std::ifstream in(check_path, std::ios::binary);
      std::stringstream text;
      text << in.rdbuf();
      if (in && marchproxy::egress::isEgressDocument(text.str())) {
        auto er = marchproxy::egress::loadFile(check_path);
        if (!er.config) {
          for (const auto& e : er.errors) std::printf("%s\n", e.toString().c_str());
          std::printf("%s: %zu error(s)\n", check_path.c_str(), er.errors.size());
          return 1;
        }
        std::printf("%s\n", marchproxy::egress::summary(*er.config).c_str());
        return 0;
      }
    }
    auto r = marchproxy::config::loadFile(check_path);
    for (const auto& w : r.warnings) std::printf("warning: %s\n", w.toString().c_str());
    if (!r.snapshot) {
      for (const auto& e : r.errors) std::printf("%s\n", e.toString().c_str());
      std::printf("%s: %zu error(s)\n", check_path.c_str(), r.errors.size());
      return 1;
    }
    // TLS files (certificates, keys, CA bundles, CRLs) are read and checked as the proxy would.
    auto tls_problems = marchproxy::proxy::tls::checkSnapshot(
        *r.snapshot, std::filesystem::absolute(check_path).parent_path());
    size_t tls_errors = 0;
    for (const auto& p : tls_problems) {
      std::printf("%s%s\n", p.warning ? "warning: " : "", p.toString().c_str());
      tls_errors += p.warning ? 0 : 1;
    }
    // The Redis password is read as the proxy would; an unset variable is only a warning here, as
    // `check` rarely runs with the proxy's environment.
    if (r.snapshot->redis) {
      try {
        marchproxy::proxy::limits::readRedisPassword(*r.snapshot->redis,
                                                     std::filesystem::absolute(check_path).parent_path());
      } catch (const std::exception& e) {
        const bool env = r.snapshot->redis->password_file.empty();
        std::printf("%s%s%s\n", env ? "warning: " : "", e.what(),
                    env ? " in this environment (the proxy refuses to start without it)" : "");
        tls_errors += env ? 0 : 1;
      }
    }
    if (tls_errors) {
      std::printf("%s: %zu error(s)\n", check_path.c_str(), tls_errors);
      return 1;
    }
    std::printf("%s\n", marchproxy::config::summary(*r.snapshot).c_str());
    return 0;
  }
  if (*xdp_status) {
    auto report = marchproxy::fastpath::inspect();
    std::fputs(report.text.c_str(), stdout);
    return report.permitted ? 0 : 1;
  }
  if (*up) return marchproxy::up::run(up_opts);
  if (*demo) return marchproxy::up::runDemoUpstream(demo_listen, demo_name);
  if (*license_keygen) return marchproxy::manager::license::keygenCommand(lic_out_private, lic_out_public);
  if (*license_issue) return marchproxy::manager::license::issueCommand(lic_key, lic_features, lic_payload, lic_out);
  if (*ingress) {
    if (!resolveSource("ingress", ingress_opts.config_path, ingress_opts.manager, ingress_manager)) return 2;
    return marchproxy::ingress::run(ingress_opts);
  }
  if (*manager) return marchproxy::manager::run(manager_opts);
  if (*egress) {
    if (!resolveSource("egress", egress_opts.config_path, egress_opts.manager, egress_manager)) return 2;
    return marchproxy::egress::run(egress_opts);
  }
  return 2;
}
