#pragma once
// `marchproxy up`: starts, on one machine, a manager on SQLite in a data directory (which also serves
// the web UI), a demo upstream, and one ingress and one egress registered to the manager; on first run
// it creates the admin user (password generated and printed once), a "demo" cluster and a route to the
// demo upstream. Ctrl-C (or SIGTERM) stops everything; a second `up` reuses the data directory.
//
// Every part runs as a child process of this one (the same binary, other subcommands), so each keeps
// its own signals, logs and drain behaviour; this process only supervises. See docs/operations.md.
#include <string>

namespace marchproxy::up {

struct Options {
  std::string data_dir = "marchproxy-data";
  std::string host = "127.0.0.1";  // every listener binds here
  int manager_port = 8000;         // API + web UI
  int control_port = 8443;         // proxies <-> manager (mTLS)
  int ingress_port = 8080;
  int ingress_admin_port = 9901;
  int egress_port = 3128;          // HTTP forward proxy + CONNECT
  int socks_port = 1080;
  int egress_admin_port = 9902;
  int demo_port = 9001;
  std::string ui_dir;              // passed to the manager when set
  int ready_timeout_s = 60;
};

// Returns the process exit code: 0 after a clean Ctrl-C, 1 when a part failed to start or died.
int run(const Options& options);

// `marchproxy demo-upstream --listen HOST:PORT --name NAME`: a tiny HTTP/1.1 server answering every
// request with 200 and a line naming itself and the path (the target `up` routes to).
int runDemoUpstream(const std::string& listen, const std::string& name);

}  // namespace marchproxy::up
