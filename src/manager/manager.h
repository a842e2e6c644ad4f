#pragma once
// `marchproxy manager`: the REST API over SQLite or PostgreSQL (see docs/manager.md).
#include <string>

namespace marchproxy::manager {

struct Options {
  std::string config_file;   // optional JSON file with the same keys as the flags
  std::string listen;        // default 127.0.0.1:8000
  std::string tls_cert, tls_key;
  std::string database_url;  // default sqlite file <data_dir>/manager.db
  std::string data_dir;      // default ./marchproxy-data
  std::string master_key_file;
  int pool_size = 0;         // default 8
  int cert_renew_days = 0;   // re-issue MarchProxy-issued certificates expiring within (default 30)
  bool ca_intermediate = false;  // create the intermediate CA at start (enterprise feature intermediate-ca)
  std::string license_file;        // enterprise licence (docs/licensing.md); empty = community
  std::string license_public_key;  // file with, or the text of, the Ed25519 public key (PEM or base64)
  std::string license_server;      // optional online validation URL; off when empty
  int license_grace_days = 0;      // 0: the licence's signed grace period; else at most this many days
  // The control listener proxies use (docs/control-protocol.md, docs/control-plane.md).
  std::string control_listen;  // default 127.0.0.1:8443
  std::string control_hosts;   // SANs of its certificate, comma-separated (default localhost,127.0.0.1,::1,<hostname>)
  int heartbeat_interval = 0;  // seconds told to proxies; stale after 3 missed (default 30)
  std::string ui_dir;        // the built web UI; default: http::defaultUiDir(); "-" = do not serve it
};

// Fills unset options from MARCHPROXY_* environment variables, then the config file, then defaults.
// Returns an error text (empty on success).
std::string resolveOptions(Options& o);

int run(Options opts);

// The OpenAPI document embedded at build time from docs/openapi.json.
const char* openapiDocument();

}  // namespace marchproxy::manager
