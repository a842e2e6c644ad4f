#include "up/up.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace marchproxy::up {
namespace {

namespace fs = std::filesystem;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = boost::asio::ip::tcp;
using Json = nlohmann::json;

// ---- small helpers ------------------------------------------------------------------------------

std::string randomPassword() {
  static const char kAlphabet[] = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
  std::random_device rd;  // the kernel's CSPRNG on Linux
  std::uniform_int_distribution<int> pick(0, sizeof(kAlphabet) - 2);
  std::string s;
  for (int i = 0; i < 24; ++i) s += kAlphabet[pick(rd)];
  return s;
}

void writePrivateFile(const fs::path& p, const std::string& content) {
  fs::path tmp = p;
  tmp += ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) throw std::runtime_error(tmp.string() + ": " + std::strerror(errno));
  bool ok = ::write(fd, content.data(), content.size()) == static_cast<ssize_t>(content.size()) && ::fsync(fd) == 0;
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), p.c_str()) != 0) throw std::runtime_error(p.string() + ": cannot write");
}

std::string readFile(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string tailOf(const fs::path& p, std::size_t lines) {
  std::ifstream in(p);
  std::deque<std::string> last;
  for (std::string l; std::getline(in, l);) {
    last.push_back(l);
    if (last.size() > lines) last.pop_front();
  }
  std::string out;
  for (const auto& l : last) out += "    " + l + "\n";
  return out;
}

struct HttpResult {
  int status = 0;  // 0 = could not connect / no answer
  std::string body;
};

// One plain-HTTP request to host:port (the manager's API listener, a proxy's admin endpoint, the
// ingress). Never throws: a refused connection is status 0.
HttpResult httpCall(const std::string& host, int port, const std::string& method, const std::string& target,
                    const std::string& body = "", const std::string& bearer = "",
                    const std::string& host_header = "") {
  HttpResult out;
  try {
    boost::asio::io_context ioc;
    beast::tcp_stream stream(ioc);
    stream.expires_after(std::chrono::seconds(10));
    tcp::resolver resolver(ioc);
    stream.connect(resolver.resolve(host, std::to_string(port)));
    bhttp::request<bhttp::string_body> req(bhttp::string_to_verb(method), target, 11);
    req.set(bhttp::field::host, host_header.empty() ? host + ":" + std::to_string(port) : host_header);
    req.set(bhttp::field::user_agent, "marchproxy-up");
    if (!bearer.empty()) req.set(bhttp::field::authorization, "Bearer " + bearer);
    if (!body.empty()) {
      req.set(bhttp::field::content_type, "application/json");
      req.body() = body;
    }
    req.prepare_payload();
    bhttp::write(stream, req);
    beast::flat_buffer buf;
    bhttp::response<bhttp::string_body> res;
    bhttp::read(stream, buf, res);
    out.status = static_cast<int>(res.result_int());
    out.body = std::move(res.body());
    beast::error_code ec;
    stream.socket().shutdown(tcp::socket::shutdown_both, ec);
  } catch (const std::exception&) {
    out.status = 0;
  }
  return out;
}

std::string problemText(const HttpResult& r) {
  if (r.status == 0) return "no answer";
  try {
    auto j = Json::parse(r.body);
    if (j.contains("detail")) return std::to_string(r.status) + " " + j["detail"].get<std::string>();
  } catch (const std::exception&) {
  }
  return std::to_string(r.status) + " " + r.body.substr(0, 200);
}

// ---- child processes ----------------------------------------------------------------------------

struct Child {
  std::string name;
  pid_t pid = -1;
  fs::path log;
};

sigset_t stopSignals() {
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, SIGINT);
  sigaddset(&s, SIGTERM);
  sigaddset(&s, SIGCHLD);
  return s;
}

// Starts this binary with `args`, stdout+stderr appended to `log`, `env` added to the environment.
// The child dies with us (PR_SET_PDEATHSIG), so a killed supervisor leaves nothing behind.
Child spawn(const std::string& name, const std::vector<std::string>& args, const fs::path& log,
            const std::vector<std::string>& env = {}) {
  std::vector<std::string> argv_s = {"marchproxy"};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  // The parts get this environment minus MARCHPROXY_* (a MARCHPROXY_DATABASE_URL meant for a real
  // manager must not point the demo system at it); `up` passes what they need explicitly.
  std::vector<std::string> env_s;
  for (char** e = environ; *e; ++e)
    if (std::strncmp(*e, "MARCHPROXY_", 11) != 0) env_s.emplace_back(*e);
  env_s.insert(env_s.end(), env.begin(), env.end());
  std::vector<char*> envp;
  for (auto& e : env_s) envp.push_back(e.data());
  envp.push_back(nullptr);

  int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) throw std::runtime_error(log.string() + ": " + std::strerror(errno));
  pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
  if (pid == 0) {  // only async-signal-safe calls from here to exec
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent) ::_exit(127);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    int devnull = ::open("/dev/null", O_RDONLY);
    if (devnull >= 0) ::dup2(devnull, 0);
    ::execve("/proc/self/exe", argv.data(), envp.data());
    ::_exit(127);
  }
  ::close(fd);
  return {name, pid, log};
}

class Supervisor {
 public:
  explicit Supervisor(const Options& o) : o_(o) {}

  // Returns the name of a child that exited (and reaps it), or nullopt.
  std::optional<std::string> reapDead() {
    for (auto& c : children_) {
      if (c.pid <= 0) continue;
      int status = 0;
      pid_t r = ::waitpid(c.pid, &status, WNOHANG);
      if (r == c.pid) {
        c.pid = -1;
        std::string how = WIFEXITED(status) ? "exited with status " + std::to_string(WEXITSTATUS(status))
                                            : "was killed by signal " + std::to_string(WTERMSIG(status));
        return c.name + " " + how;
      }
    }
    return std::nullopt;
  }

  void start(const std::string& name, const std::vector<std::string>& args, const std::vector<std::string>& env = {}) {
    children_.push_back(spawn(name, args, logs() / (name + ".log"), env));
  }

  const Child* find(const std::string& name) const {
    for (const auto& c : children_)
      if (c.name == name) return &c;
    return nullptr;
  }

  // Stops the children in reverse start order: SIGTERM (the proxies drain), then SIGKILL after 15 s.
  void stopAll() {
    for (auto it = children_.rbegin(); it != children_.rend(); ++it) {
      if (it->pid <= 0) continue;
      ::kill(it->pid, SIGTERM);
      auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
      int status = 0;
      while (::waitpid(it->pid, &status, WNOHANG) == 0) {
        if (std::chrono::steady_clock::now() > deadline) {
          std::fprintf(stderr, "up: %s did not stop within 15 s; killing it\n", it->name.c_str());
          ::kill(it->pid, SIGKILL);
          ::waitpid(it->pid, &status, 0);
          break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      it->pid = -1;
    }
  }

  // Waits until `probe` is true. Fails (with the reason) when a child dies, a stop signal arrives or
  // the deadline passes.
  template <class Probe>
  std::string waitFor(const std::string& what, Probe probe) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(o_.ready_timeout_s);
    sigset_t sigs = stopSignals();
    while (true) {
      if (probe()) return "";
      if (auto dead = reapDead()) return *dead + " while waiting for " + what;
      timespec ts{0, 100'000'000};
      int sig = ::sigtimedwait(&sigs, nullptr, &ts);
      if (sig == SIGINT || sig == SIGTERM) return "interrupted";
      if (std::chrono::steady_clock::now() > deadline)
        return what + " not ready after " + std::to_string(o_.ready_timeout_s) + " s";
    }
  }

  fs::path logs() const { return fs::path(o_.data_dir) / "logs"; }

 private:
  const Options& o_;
  std::vector<Child> children_;
};

std::string hostPort(const std::string& host, int port) {
  return (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

// Empty when host:port can be bound now; otherwise why not. Checked before anything starts, so `up`
// never talks to (or hands the generated admin password to) some other program on its ports.
std::string portBusy(const std::string& host, int port) {
  try {
    boost::asio::io_context ioc;
    tcp::acceptor a(ioc);
    tcp::endpoint ep(boost::asio::ip::make_address(host), static_cast<unsigned short>(port));
    a.open(ep.protocol());
    a.set_option(tcp::acceptor::reuse_address(true));
    a.bind(ep);
    return "";
  } catch (const std::exception& e) {
    return e.what();
  }
}

// First run: the "demo" cluster with a route from every host name to the demo upstream. Returns the
// cluster key (shown once by the manager, kept 0600 in the data directory for the proxies).
std::string bootstrapDemo(const Options& o, const std::string& password) {
  auto login = httpCall(o.host, o.manager_port, "POST", "/api/v1/auth/login",
                        Json{{"username", "admin"}, {"password", password}}.dump());
  if (login.status != 200) throw std::runtime_error("login as admin failed: " + problemText(login));
  std::string token = Json::parse(login.body).at("access_token").get<std::string>();

  auto cluster = httpCall(o.host, o.manager_port, "POST", "/api/v1/clusters",
                          Json{{"name", "demo"}, {"description", "created by marchproxy up"}}.dump(), token);
  if (cluster.status != 201) throw std::runtime_error("creating the demo cluster failed: " + problemText(cluster));
  auto cj = Json::parse(cluster.body);
  std::string key = cj.at("api_key").get<std::string>();
  auto id = cj.at("id").get<std::int64_t>();

  Json route = {{"cluster_id", id},
                {"name", "demo"},
                {"hosts", {"localhost"}},
                {"paths", {"/"}},
                {"backends", {{{"address", hostPort(o.host, o.demo_port)}, {"weight", 1}}}}};
  auto r = httpCall(o.host, o.manager_port, "POST", "/api/v1/routes", route.dump(), token);
  if (r.status != 201) throw std::runtime_error("creating the demo route failed: " + problemText(r));
  httpCall(o.host, o.manager_port, "POST", "/api/v1/auth/logout", "{}", token);
  return key;
}

}  // namespace

int run(const Options& o) {
  fs::path data = fs::absolute(o.data_dir);
  std::error_code ec;
  fs::create_directories(data / "logs", ec);
  if (ec) {
    std::fprintf(stderr, "up: %s: %s\n", data.c_str(), ec.message().c_str());
    return 1;
  }
  fs::permissions(data, fs::perms::owner_all, ec);
  Options opt = o;
  opt.data_dir = data.string();

  // Signals are taken synchronously (sigtimedwait) so a Ctrl-C at any moment stops what has started.
  sigset_t sigs = stopSignals();
  ::sigprocmask(SIG_BLOCK, &sigs, nullptr);

  Supervisor sup(opt);
  fs::path state_file = data / "up.json";
  fs::path key_file = data / "cluster.key";
  bool first_run = !fs::exists(state_file);
  bool fresh_db = !fs::exists(data / "manager.db");
  bool interrupted = !first_run && readFile(state_file).find("\"bootstrapping\"") != std::string::npos;
  std::string password;
  int rc = 0;
  try {
    if (first_run && !fresh_db)
      throw std::runtime_error(data.string() + " holds a manager database that `up` did not create; use another "
                               "--data-dir, or run `marchproxy manager` on it directly");
    if (interrupted)
      throw std::runtime_error("the first `up` in " + data.string() + " was stopped before it finished setting up; "
                               "remove that directory and run `marchproxy up` again");
    if (first_run) writePrivateFile(state_file, Json{{"state", "bootstrapping"}}.dump() + "\n");
    if (!first_run) {  // the demo route in the database points where the first run put the demo upstream
      auto st = Json::parse(readFile(state_file), nullptr, false);
      if (st.is_object() && st.contains("demo_port") && st["demo_port"].is_number_integer() &&
          st["demo_port"].get<int>() != opt.demo_port) {
        std::printf("up: the demo route points at port %d (set up by the first run); the demo upstream runs there\n",
                    st["demo_port"].get<int>());
        opt.demo_port = st["demo_port"].get<int>();
      }
    }
    for (auto [what, port] : {std::pair{"--manager-port", opt.manager_port}, {"--control-port", opt.control_port},
                              {"--ingress-port", opt.ingress_port}, {"--ingress-admin-port", opt.ingress_admin_port},
                              {"--egress-port", opt.egress_port}, {"--socks-port", opt.socks_port},
                              {"--egress-admin-port", opt.egress_admin_port}, {"--demo-port", opt.demo_port}})
      if (auto why = portBusy(opt.host, port); !why.empty())
        throw std::runtime_error(hostPort(opt.host, port) + " (" + what + ") cannot be used: " + why +
                                 "; stop what holds it or pick another port");
    std::vector<std::string> menv;
    if (first_run) {
      password = randomPassword();
      menv.push_back("MARCHPROXY_ADMIN_PASSWORD=" + password);
    }
    sup.start("demo-upstream", {"demo-upstream", "--listen", hostPort(opt.host, opt.demo_port), "--name", "demo"});
    std::vector<std::string> margs = {"manager",
                                      "--listen", hostPort(opt.host, opt.manager_port),
                                      "--control-listen", hostPort(opt.host, opt.control_port),
                                      "--data-dir", data.string(),
                                      "--database-url", "sqlite://" + (data / "manager.db").string()};
    if (!opt.ui_dir.empty()) margs.insert(margs.end(), {"--ui-dir", opt.ui_dir});
    sup.start("manager", margs, menv);
    if (auto err = sup.waitFor("the manager", [&] {
          return httpCall(opt.host, opt.manager_port, "GET", "/healthz").status == 200;
        });
        !err.empty())
      throw std::runtime_error(err);

    if (first_run) {
      writePrivateFile(key_file, bootstrapDemo(opt, password));
      writePrivateFile(state_file, Json{{"state", "ready"}, {"created_by", "marchproxy up"}, {"cluster", "demo"}, {"demo_port", opt.demo_port}}.dump(2) + "\n");
    }
    auto ca = httpCall(opt.host, opt.manager_port, "GET", "/api/v1/ca.pem");
    if (ca.status != 200) throw std::runtime_error("fetching the manager's CA certificate failed: " + problemText(ca));
    writePrivateFile(data / "ca.pem", ca.body);

    std::string manager_url = "https://" + hostPort(opt.host, opt.control_port);
    auto proxyArgs = [&](const std::string& kind, std::vector<std::string> binds, int admin_port) {
      std::vector<std::string> a = {kind,
                                    "--manager", manager_url,
                                    "--manager-ca", (data / "ca.pem").string(),
                                    "--cluster-key-file", key_file.string(),
                                    "--name", "up-" + kind,
                                    "--state-dir", (data / kind).string(),
                                    "--admin", hostPort(opt.host, admin_port)};
      for (auto& b : binds) a.insert(a.end(), {"--bind", b});
      return a;
    };
    sup.start("ingress", proxyArgs("ingress", {"http=" + hostPort(opt.host, opt.ingress_port)}, opt.ingress_admin_port));
    sup.start("egress", proxyArgs("egress",
                                  {"proxy=" + hostPort(opt.host, opt.egress_port),
                                   "socks5=" + hostPort(opt.host, opt.socks_port)},
                                  opt.egress_admin_port));
    for (auto [name, port] : {std::pair{"ingress", opt.ingress_admin_port}, {"egress", opt.egress_admin_port}}) {
      if (auto err = sup.waitFor(std::string("the ") + name, [&, port = port] {
            return httpCall(opt.host, port, "GET", "/ready").status == 200;
          });
          !err.empty())
        throw std::runtime_error(err);
    }
    // Ready means a snapshot is applied; the demo route answering means it is the manager's.
    if (auto err = sup.waitFor("the demo route", [&] {
          return httpCall(opt.host, opt.ingress_port, "GET", "/", "", "", "localhost").status == 200;
        });
        !err.empty())
      throw std::runtime_error(err);

    std::printf("\nMarchProxy is up (data in %s, logs in %s/)\n\n", data.c_str(), sup.logs().c_str());
    std::printf("  manager + web UI  http://%s/\n", hostPort(opt.host, opt.manager_port).c_str());
    if (first_run)
      std::printf("                    user admin, password %s\n"
                  "                    (shown once, stored nowhere: change it after the first login)\n",
                  password.c_str());
    else
      std::printf("                    user admin (password as printed by the first `up`)\n");
    std::printf("  ingress           http://localhost:%d/  ->  demo upstream %s\n", opt.ingress_port,
                hostPort(opt.host, opt.demo_port).c_str());
    std::printf("  egress            http://%s (HTTP and CONNECT), socks5://%s: default deny, add mappings\n",
                hostPort(opt.host, opt.egress_port).c_str(), hostPort(opt.host, opt.socks_port).c_str());
    std::printf("\n  try:  curl http://localhost:%d/\n\nCtrl-C stops everything.\n", opt.ingress_port);
    std::fflush(stdout);

    while (true) {
      timespec ts{0, 200'000'000};
      int sig = ::sigtimedwait(&sigs, nullptr, &ts);
      if (sig == SIGINT || sig == SIGTERM) {
        std::printf("\nup: stopping (ingress and egress drain first)\n");
        std::fflush(stdout);
        break;
      }
      if (auto dead = sup.reapDead()) {
        const Child* c = nullptr;
        for (const char* n : {"manager", "ingress", "egress", "demo-upstream"})
          if (dead->rfind(n, 0) == 0) c = sup.find(n);
        std::fprintf(stderr, "up: %s; stopping everything. Last lines of its log:\n%s", dead->c_str(),
                     c ? tailOf(c->log, 20).c_str() : "");
        rc = 1;
        break;
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "up: %s\n", e.what());
    std::fprintf(stderr, "up: logs are in %s/ — last lines:\n", sup.logs().c_str());
    for (const char* n : {"manager", "ingress", "egress"})
      if (const Child* c = sup.find(n)) std::fprintf(stderr, "  %s:\n%s", n, tailOf(c->log, 10).c_str());
    rc = 1;
  }
  sup.stopAll();
  return rc;
}

}  // namespace marchproxy::up
