#pragma once
// The control loop's endpoints (docs/control-protocol.md): on the control listener, proxy
// registration, the config long-poll, heartbeats, certificate renewal and the CA bundle; on the API
// listener, the proxies list, detail and delete. Owns the snapshot compiler and the change notifier.
//
// Threading: handlers run on the servers' connection threads; everything here is thread-safe.
#include <memory>
#include <string>

#include "manager/api/context.h"
#include "manager/ca/authority.h"
#include "manager/control/compiler.h"
#include "manager/control/notifier.h"
#include "manager/license/license.h"

namespace marchproxy::manager::control {

struct Options {
  int heartbeat_interval_s = 30;  // told to proxies at registration; stale after 3 missed beats
  int max_wait_s = 30;            // longest config long-poll
  // Re-read config_version every second while waiting, for changes made by other managers sharing
  // the database (PostgreSQL); in-process changes wake waiters at once either way.
  bool poll_database = false;
  int cert_days = 90;  // proxy certificate lifetime
};

class Service {
 public:
  // `license` may be null (community edition limits).
  Service(api::App& app, ca::Authority& ca, license::Licensing* license, Options opts);
  ~Service();

  void addControlRoutes(http::Router& r);  // the control listener (mTLS)
  void addApiRoutes(http::Router& r);      // the API listener (users)
  std::string metricsText();               // Prometheus families for /metrics

  Notifier& notifier() { return notifier_; }
  Compiler& compiler() { return compiler_; }

 private:
  api::App& app_;
  ca::Authority& ca_;
  license::Licensing* license_;
  Options opts_;
  Notifier notifier_;
  Compiler compiler_;
};

}  // namespace marchproxy::manager::control
