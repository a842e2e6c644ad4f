#include "control/agent.h"

#include <arpa/inet.h>
#include <sys/resource.h>
#include <unistd.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cctype>
#include <charconv>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/base/log.h"
#include "control/identity.h"

namespace marchproxy::control {

namespace asio = boost::asio;
namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace std::chrono_literals;
constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);

namespace {

std::string trim(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  size_t i = 0;
  while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  return s.substr(i);
}

std::optional<std::string> readFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool validName(const std::string& n) {
  if (n.empty() || n.size() > 63) return false;
  auto ok = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
  if (!ok(n[0])) return false;
  for (char c : n)
    if (!ok(c) && c != '.' && c != '_' && c != '-') return false;
  return true;
}

std::string defaultName(const std::string& kind) {
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  std::string out;
  for (char c : std::string(host)) {
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    out += ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-') ? c : '-';
  }
  while (!out.empty() && !std::isalnum(static_cast<unsigned char>(out[0]))) out.erase(0, 1);
  if (out.empty()) out = "proxy";
  out = out.substr(0, 62 - kind.size());
  return out + "-" + kind;
}

// "detail" (or "title") of a problem+json answer, else the start of the body.
std::string problemText(int status, const std::string& body) {
  auto j = json::parse(body, nullptr, false);
  if (j.is_object()) {
    if (j.contains("detail") && j["detail"].is_string()) return fmt::format("HTTP {}: {}", status, j["detail"].get<std::string>());
    if (j.contains("title") && j["title"].is_string()) return fmt::format("HTTP {}: {}", status, j["title"].get<std::string>());
  }
  return fmt::format("HTTP {}{}{}", status, body.empty() ? "" : ": ", body.substr(0, 200));
}

// "certificate-revoked" from a problem+json body's type URL; "" otherwise.
std::string problemType(const std::string& body) {
  auto j = json::parse(body, nullptr, false);
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string()) return "";
  const std::string t = j["type"].get<std::string>();
  return t.substr(t.rfind('/') + 1);
}

std::string isoTime(std::chrono::system_clock::time_point t) {
  const std::time_t s = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&s, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

int64_t unixNow() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

Result<Listen> parseListen(const std::string& text) {
  Listen out;
  std::string_view port;
  if (!text.empty() && text.front() == '[') {
    const size_t close = text.find(']');
    if (close == std::string::npos || close + 1 >= text.size() || text[close + 1] != ':')
      return Error{fmt::format("\"{}\": expected [IPV6]:PORT", text)};
    out.address = text.substr(1, close - 1);
    port = std::string_view(text).substr(close + 2);
  } else {
    const size_t colon = text.rfind(':');
    if (colon == std::string::npos) return Error{fmt::format("\"{}\": expected ADDRESS:PORT", text)};
    out.address = text.substr(0, colon);
    port = std::string_view(text).substr(colon + 1);
  }
  unsigned char buf[16];
  const bool v6 = out.address.find(':') != std::string::npos;
  if (inet_pton(v6 ? AF_INET6 : AF_INET, out.address.c_str(), buf) != 1)
    return Error{fmt::format("\"{}\": \"{}\" is not an IP address", text, out.address)};
  unsigned p = 0;
  auto [ptr, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
  if (port.empty() || ec != std::errc() || ptr != port.data() + port.size() || p > 65535)
    return Error{fmt::format("\"{}\": port must be 0-65535", text)};
  out.port = static_cast<uint16_t>(p);
  return out;
}

Result<bool> AgentOptions::finish() {
  if (kind != "ingress" && kind != "egress") return Error{"kind must be ingress or egress"};
  if (auto u = parseManagerUrl(manager_url); !u) return u.error();
  if (name.empty()) name = defaultName(kind);
  if (!validName(name))
    return Error{fmt::format("--name \"{}\": must match [a-z0-9][a-z0-9._-]{{0,62}}", name)};
  if (state_dir.empty()) state_dir = fmt::format("./marchproxy-{}-state", kind);
  if (!cluster_key_file.empty()) {
    auto k = readFile(cluster_key_file);
    if (!k) return Error{fmt::format("--cluster-key-file {}: cannot read it", cluster_key_file)};
    cluster_key = trim(*k);
    if (cluster_key.empty()) return Error{fmt::format("--cluster-key-file {}: the file is empty", cluster_key_file)};
  } else if (cluster_key.empty()) {
    if (const char* env = std::getenv("MARCHPROXY_CLUSTER_KEY")) cluster_key = trim(env);
  }
  if (cluster_key.empty()) {
    std::error_code ec;
    if (!fs::exists(fs::path(state_dir) / "identity" / "token", ec))
      return Error{"no cluster key: give --cluster-key-file FILE or set MARCHPROXY_CLUSTER_KEY (needed to register)"};
  }
  if (!manager_ca.empty()) {
    std::error_code ec;
    if (!fs::is_regular_file(manager_ca, ec)) return Error{fmt::format("--manager-ca {}: file not found", manager_ca)};
  }
  bind_overrides.clear();
  for (const auto& b : binds) {
    const size_t eq = b.find('=');
    if (eq == std::string::npos || eq == 0) return Error{fmt::format("--bind \"{}\": expected NAME=ADDRESS:PORT", b)};
    auto l = parseListen(b.substr(eq + 1));
    if (!l) return Error{"--bind " + l.error().message};
    if (!bind_overrides.emplace(b.substr(0, eq), *l).second)
      return Error{fmt::format("--bind {}: given twice", b.substr(0, eq))};
  }
  admin_override.reset();
  if (!admin.empty()) {
    auto l = parseListen(admin);
    if (!l) return Error{"--admin " + l.error().message};
    admin_override = *l;
  }
  return true;
}

Result<std::string> effectiveConfig(const std::string& manager_config_json, const std::string& kind,
                                    const std::map<std::string, Listen>& binds, const std::optional<Listen>& admin) {
  json c = json::parse(manager_config_json, nullptr, false);
  if (!c.is_object()) return Error{"config: not a JSON object"};
  if (c.contains("kind")) {
    if (!c["kind"].is_string() || c["kind"].get<std::string>() != kind)
      return Error{fmt::format("config.kind: {} is not this proxy's kind ({})", c["kind"].dump(), kind)};
    if (kind == "ingress") c.erase("kind");  // the ingress format has no "kind"; egress requires it
  } else if (kind == "egress") {
    c["kind"] = "egress";
  }
  if (!binds.empty() && c.contains("listeners") && c["listeners"].is_array()) {
    for (auto& l : c["listeners"]) {
      if (!l.is_object() || !l.contains("name") || !l["name"].is_string()) continue;
      auto it = binds.find(l["name"].get<std::string>());
      if (it == binds.end()) continue;
      l["address"] = it->second.address;
      l["port"] = it->second.port;
    }
  }
  if (admin) {
    if (!c.contains("admin") || !c["admin"].is_object()) c["admin"] = json::object();
    c["admin"]["address"] = admin->address;
    c["admin"]["port"] = admin->port;
  }
  return c.dump(2) + "\n";
}

Agent::Agent(AgentOptions options) : options_(std::move(options)), state_(options_.state_dir) {}

std::string Agent::clusterKey() const {
  if (!options_.cluster_key_file.empty())  // re-read: the operator may have rotated it
    if (auto k = readFile(options_.cluster_key_file); k && !trim(*k).empty()) return trim(*k);
  return options_.cluster_key;
}

std::string Agent::buildClientContexts() {
  std::vector<proxy::tls::Problem> problems;
  config::UpstreamTls anon;
  anon.ca = options_.manager_ca;
  anon_tls_ = proxy::tls::ClientContext::build(anon, "--manager-ca", {}, &problems);
  if (!anon_tls_) return problems.empty() ? "TLS client context" : problems.front().toString();
  mtls_.reset();
  if (token_.empty() || cert_pem_.empty()) return {};
  config::UpstreamTls m = anon;
  m.client_cert = (state_.root() / "identity" / "cert.pem").string();
  m.client_key = (state_.root() / "identity" / "key.pem").string();
  mtls_ = proxy::tls::ClientContext::build(m, "identity", {}, &problems);
  if (!mtls_) return problems.empty() ? "TLS client context" : problems.front().toString();
  return {};
}

bool Agent::loadIdentity() {
  auto meta = state_.readIdentity("proxy.json");
  auto token = state_.readIdentity("token");
  auto key = state_.readIdentity("key.pem");
  auto cert = state_.readIdentity("cert.pem");
  if (key) key_pem_ = *key;
  if (!meta || !token || !key || !cert) return false;
  json m = json::parse(*meta, nullptr, false);
  if (!m.is_object() || !m.contains("id") || !m["id"].is_number_unsigned()) return false;
  if (m.value("name", std::string()) != options_.name || m.value("manager", std::string()) != options_.manager_url)
    return false;  // another name or manager: another proxy, register afresh
  id_ = m["id"].get<uint64_t>();
  heartbeat_interval_ = std::chrono::seconds(std::max<int64_t>(1, m.value("heartbeat_interval_s", int64_t{30})));
  token_ = trim(*token);
  cert_pem_ = *cert;
  return true;
}

Result<std::string> Agent::prepare() {
  if (auto u = parseManagerUrl(options_.manager_url); u) url_ = *u;
  else return u.error();
  if (auto err = state_.ensure(); !err.empty()) return Error{err};
  loadIdentity();
  if (auto err = buildClientContexts(); !err.empty()) return Error{err};
  if (!state_.hasCurrent()) return std::string();
  auto version = state_.currentVersion();
  auto raw = readFile((state_.root() / "current" / "manager.json").string());
  json m = raw ? json::parse(*raw, nullptr, false) : json();
  if (!version || !m.is_object() || !m.contains("config")) {
    spdlog::warn("manager: cached snapshot in {} is incomplete; waiting for the manager",
                 (state_.root() / "current").string());
    return std::string();
  }
  // Today's --bind/--admin apply to the cached snapshot too.
  auto cfg = effectiveConfig(m["config"].dump(), options_.kind, options_.bind_overrides, options_.admin_override);
  if (!cfg) {
    spdlog::warn("manager: cached snapshot version {} is unusable ({}); waiting for the manager", *version,
                 cfg.error().message);
    return std::string();
  }
  if (auto err = writeFileAtomic(state_.currentConfig(), *cfg); !err.empty()) return Error{err};
  applied_version_ = seen_version_ = *version;
  applied_hash_ = m.value("hash", std::string());
  m_applied_version_ = applied_version_;
  spdlog::info("manager: serving cached snapshot version {} from {} until the manager answers", *version,
               state_.root().string());
  return state_.currentConfig().string();
}

void Agent::start(asio::io_context& control, Host& host) {
  ioc_ = &control;
  host_ = &host;
  poll_conn_ = std::make_unique<HttpsConnection>(control, url_);
  beat_conn_ = std::make_unique<HttpsConnection>(control, url_);
  heartbeat_due_ = true;  // tell the manager at once that this proxy (re)started, when registered
  asio::co_spawn(*ioc_, pollLoop(), asio::detached);
  asio::co_spawn(*ioc_, heartbeatLoop(), asio::detached);
}

void Agent::stop() {
  stopped_ = true;
  if (heartbeat_wake_) heartbeat_wake_->cancel();
  // The kept connections belong to the control io_context, which is destroyed before this agent.
  if (poll_conn_) poll_conn_->close();
  if (beat_conn_) beat_conn_->close();
}

asio::awaitable<void> Agent::sleep(std::chrono::milliseconds d) {
  asio::steady_timer t(*ioc_);
  t.expires_after(d);
  co_await t.async_wait(kNoThrow);
}

void Agent::setReachable(bool up, const std::string& reason) {
  if (up) {
    if (!unreachable_reason_.empty()) spdlog::info("manager reachable again at {}", options_.manager_url);
    unreachable_reason_.clear();
    m_reachable_ = 1;
    return;
  }
  m_reachable_ = 0;
  unreachable_reason_ = reason;
}

Agent::Outcome Agent::classify(const Result<HttpsResponse>& r, const char* what, std::chrono::milliseconds* wait) {
  std::string reason;
  if (!r) reason = r.error().message;
  else if (r->status >= 500) reason = problemText(r->status, r->body);
  if (!reason.empty()) {
    const bool changed = reason != unreachable_reason_;
    setReachable(false, reason);
    *wait = backoff_.next(rng_);
    if (changed)
      spdlog::warn("manager unreachable ({}): {}; retrying in {:.1f} s", what, reason, wait->count() / 1000.0);
    else
      spdlog::debug("manager unreachable ({}): {}; retrying in {:.1f} s", what, reason, wait->count() / 1000.0);
    return Outcome::kRetry;
  }
  setReachable(true, {});
  if (r->status == 401) return Outcome::kUnauthorized;
  if (r->status == 403 && problemType(r->body) == "certificate-revoked") {
    // The proxy's certificate alone was revoked (the CA API), the proxy was not: get a new one.
    spdlog::warn("manager: this proxy's certificate was revoked ({}); registering {} again for a new one",
                 problemText(r->status, r->body), options_.name);
    return Outcome::kUnauthorized;
  }
  if (r->status == 403) {
    const auto now = std::chrono::steady_clock::now();
    if (!revoked_ || now - revoked_logged_ >= 60s) {
      spdlog::error("manager refused this proxy ({}): {}; serving the cached config version {}", what,
                    problemText(r->status, r->body), applied_version_);
      revoked_logged_ = now;
    }
    revoked_ = true;
    return Outcome::kForbidden;
  }
  revoked_ = false;
  if (r->status >= 400) {
    *wait = backoff_.next(rng_);
    spdlog::error("manager answered {} to {}: {}; retrying in {:.1f} s", r->status, what,
                  problemText(r->status, r->body), wait->count() / 1000.0);
    return Outcome::kRetry;
  }
  backoff_.reset();
  return Outcome::kOk;
}

asio::awaitable<bool> Agent::registerProxy() {
  const std::string key = clusterKey();
  if (key.empty()) {
    spdlog::error("manager: cannot register {}: no cluster key (--cluster-key-file or MARCHPROXY_CLUSTER_KEY)",
                  options_.name);
    co_await sleep(60s);
    co_return false;
  }
  if (key_pem_.empty()) {
    auto k = generateKeyPem();
    if (!k) {
      spdlog::error("manager: {}", k.error().message);
      co_await sleep(60s);
      co_return false;
    }
    if (auto err = state_.writeIdentity("key.pem", *k); !err.empty()) {
      spdlog::error("manager: {}", err);
      co_await sleep(60s);
      co_return false;
    }
    key_pem_ = *k;
  }
  auto csr = makeCsrPem(key_pem_, options_.name);
  if (!csr) {
    spdlog::error("manager: {}", csr.error().message);
    co_await sleep(60s);
    co_return false;
  }
  json body = {{"cluster_key", key},   {"name", options_.name},
               {"kind", options_.kind}, {"version", options_.version},
               {"capabilities", options_.kind == "ingress" ? json::array({"http1", "tls", "xdp"}) : json::array({"http1", "connect", "socks5"})},
               {"csr", *csr}};
  HttpsRequest req{"POST", "/api/v1/proxies/register", "", body.dump(), 15s};
  auto r = co_await httpsRequest(*ioc_, url_, anon_tls_, std::move(req));
  if (stopped_) co_return false;
  std::chrono::milliseconds wait{0};
  if (!r || r->status >= 500) {
    classify(r, "register", &wait);
    co_await sleep(wait);
    co_return false;
  }
  setReachable(true, {});
  if (r->status != 200 && r->status != 201) {
    // 401 bad key, 403 licence limit, 422 a field: an operator has to act; retry slowly.
    wait = std::max<std::chrono::milliseconds>(backoff_.next(rng_), 10s);
    spdlog::error("manager refused the registration of {}: {}; retrying in {:.1f} s", options_.name,
                  problemText(r->status, r->body), wait.count() / 1000.0);
    co_await sleep(wait);
    co_return false;
  }
  json a = json::parse(r->body, nullptr, false);
  if (!a.is_object() || !a.contains("id") || !a["id"].is_number_unsigned() || !a.contains("token") ||
      !a["token"].is_string() || !a.contains("certificate") || !a["certificate"].is_string()) {
    wait = backoff_.next(rng_);
    spdlog::error("manager: registration answer without id, token or certificate; retrying in {:.1f} s",
                  wait.count() / 1000.0);
    co_await sleep(wait);
    co_return false;
  }
  id_ = a["id"].get<uint64_t>();
  token_ = a["token"].get<std::string>();
  cert_pem_ = a["certificate"].get<std::string>();
  if (a.contains("heartbeat_interval_s") && a["heartbeat_interval_s"].is_number_integer())
    heartbeat_interval_ = std::chrono::seconds(std::max<int64_t>(1, a["heartbeat_interval_s"].get<int64_t>()));
  std::string err = state_.writeIdentity("cert.pem", cert_pem_);
  if (err.empty()) err = state_.writeIdentity("ca.pem", a.value("ca_chain", std::string()));
  if (err.empty()) err = state_.writeIdentity("token", token_);
  if (err.empty())
    err = state_.writeIdentity("proxy.json", json{{"id", id_},
                                                  {"name", options_.name},
                                                  {"manager", options_.manager_url},
                                                  {"heartbeat_interval_s", heartbeat_interval_.count()}}
                                                 .dump());
  if (err.empty()) err = buildClientContexts();
  if (!err.empty() || !mtls_) {
    spdlog::error("manager: cannot keep the identity: {}", err);
    token_.clear();
    co_await sleep(backoff_.next(rng_));
    co_return false;
  }
  ++m_registrations_;
  backoff_.reset();
  spdlog::info("manager: registered as id {} (name {}, {}), heartbeat every {} s", id_, options_.name,
               options_.manager_url, heartbeat_interval_.count());
  heartbeat_due_ = true;
  if (heartbeat_wake_) heartbeat_wake_->cancel();
  co_return true;
}

asio::awaitable<void> Agent::renewIfDue() {
  auto v = certificateValidity(cert_pem_);
  if (!v || !needsRenewal(*v, unixNow())) co_return;
  auto csr = makeCsrPem(key_pem_, options_.name);
  if (!csr) co_return;
  HttpsRequest req{"POST", fmt::format("/api/v1/proxies/{}/certificate", id_), token_, json{{"csr", *csr}}.dump(), 15s};
  auto r = co_await poll_conn_->request(mtls_, std::move(req));
  if (!r || r->status != 200) {
    spdlog::warn("manager: certificate renewal failed ({}); trying again on the next poll",
                 r ? problemText(r->status, r->body) : r.error().message);
    co_return;
  }
  json a = json::parse(r->body, nullptr, false);
  if (!a.is_object() || !a.contains("certificate") || !a["certificate"].is_string()) co_return;
  cert_pem_ = a["certificate"].get<std::string>();
  std::string err = state_.writeIdentity("cert.pem", cert_pem_);
  if (err.empty() && a.contains("ca_chain") && a["ca_chain"].is_string())
    err = state_.writeIdentity("ca.pem", a["ca_chain"].get<std::string>());
  if (err.empty()) err = buildClientContexts();
  auto nv = certificateValidity(cert_pem_);
  if (!err.empty()) spdlog::error("manager: renewed certificate not usable: {}", err);
  else spdlog::info("manager: certificate renewed, valid until {}", nv ? isoTime(std::chrono::system_clock::from_time_t(nv->not_after)) : "?");
}

asio::awaitable<void> Agent::pollLoop() {
  while (!stopped_) {
    if (token_.empty() || !mtls_) {
      if (!co_await registerProxy()) continue;
    }
    co_await renewIfDue();
    if (stopped_) break;
    std::string target = fmt::format("/api/v1/proxies/{}/config?wait=30", id_);
    if (seen_version_ > 0) target += fmt::format("&since={}", seen_version_);
    HttpsRequest req{"GET", std::move(target), token_, "", 45s};
    auto r = co_await poll_conn_->request(mtls_, std::move(req));
    m_poll_connects_ = poll_conn_->connects();
    m_poll_resumed_ = poll_conn_->resumed();
    if (stopped_) break;
    std::chrono::milliseconds wait{0};
    switch (classify(r, "config", &wait)) {
      case Outcome::kOk:
        if (r->status == 200) applySnapshot(r->body);
        break;
      case Outcome::kRetry:
        co_await sleep(wait);
        break;
      case Outcome::kUnauthorized:
        if (r->status == 401)
          spdlog::warn("manager no longer accepts this proxy's token or certificate (401); registering {} again",
                       options_.name);
        token_.clear();
        mtls_.reset();
        break;
      case Outcome::kForbidden:
        co_await sleep(60s);
        break;
    }
  }
}

void Agent::applySnapshot(const std::string& body) {
  auto refuse = [&](uint64_t version, const std::string& why) {
    if (version) state_.reject(version);
    // The whole text is logged; the heartbeat carries its start (the manager keeps up to 4 KiB).
    error_ = std::make_pair(version, why.size() > 2000 ? why.substr(0, 2000) + "…" : why);
    ++m_apply_failures_;
    spdlog::error("manager: refused version {}: {}; still serving version {}", version, why, applied_version_);
    heartbeat_due_ = true;
    if (heartbeat_wake_) heartbeat_wake_->cancel();
  };
  json s = json::parse(body, nullptr, false);
  if (!s.is_object() || !s.contains("version") || !s["version"].is_number_unsigned() || !s.contains("config")) {
    refuse(0, "the answer is not a snapshot (no version or config)");
    return;
  }
  const uint64_t version = s["version"].get<uint64_t>();
  const std::string hash = s.contains("hash") && s["hash"].is_string() ? s["hash"].get<std::string>() : "";
  seen_version_ = std::max(seen_version_, version);
  if (version == applied_version_ && hash == applied_hash_) return;  // e.g. the cache we started from
  if (s.contains("kind") && s["kind"] != options_.kind) {
    refuse(version, fmt::format("kind: {} is not this proxy's kind ({})", s["kind"].dump(), options_.kind));
    return;
  }
  auto cfg = effectiveConfig(s["config"].dump(), options_.kind, options_.bind_overrides, options_.admin_override);
  if (!cfg) return refuse(version, cfg.error().message);
  std::map<std::string, std::string> files;
  if (s.contains("files")) {
    if (!s["files"].is_object()) return refuse(version, "files: not an object");
    for (auto& [name, content] : s["files"].items()) {
      if (!content.is_string()) return refuse(version, fmt::format("files.{}: not a string", name));
      files.emplace(name, content.get<std::string>());
    }
  }
  auto dir = state_.materialise(version, *cfg, files);
  if (!dir) return refuse(version, dir.error().message);
  json raw = {{"version", version}, {"hash", hash}, {"kind", options_.kind}, {"config", s["config"]}};
  if (auto err = writeFileAtomic(*dir / "manager.json", raw.dump()); !err.empty()) return refuse(version, err);
  if (auto err = host_->applyFile((*dir / "config.json").string()); !err.empty()) return refuse(version, err);
  if (auto err = state_.switchCurrent(version); !err.empty())
    spdlog::error("manager: applied version {} but cannot update {}: {}", version, state_.root().string(), err);
  applied_version_ = version;
  applied_hash_ = hash;
  error_.reset();
  m_applied_version_ = version;
  m_last_apply_unix_ = unixNow();
  spdlog::info("manager: applied version {} (hash {})", version, hash.substr(0, 19));
  heartbeat_due_ = true;
  if (heartbeat_wake_) heartbeat_wake_->cancel();
}

std::string Agent::heartbeatBody() {
  const Host::Counters c = host_->counters();
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  const double cpu = static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                     static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
  uint64_t rss = 0;
  if (std::ifstream statm("/proc/self/statm"); statm) {
    uint64_t size = 0, resident = 0;
    statm >> size >> resident;
    rss = resident * static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  }
  json j = {{"applied_version", applied_version_},
            {"applied_hash", applied_hash_},
            {"error", nullptr},
            {"started_at", isoTime(started_at_)},
            {"uptime_s", std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now() - started_at_).count()},
            {"version", options_.version},
            {"counters",
             {{"connections", c.connections},
              {"active_connections", c.active_connections},
              {"requests", c.requests},
              {"bytes_in", c.bytes_in},
              {"bytes_out", c.bytes_out},
              {"errors", c.errors}}},
            {"cpu_seconds", cpu},
            {"rss_bytes", rss}};
  if (error_) j["error"] = {{"version", error_->first}, {"message", error_->second}};
  return j.dump();
}

asio::awaitable<void> Agent::heartbeatLoop() {
  asio::steady_timer t(*ioc_);
  heartbeat_wake_ = &t;
  while (!stopped_) {
    if (!heartbeat_due_) {
      t.expires_after(jittered(heartbeat_interval_, rng_));
      co_await t.async_wait(kNoThrow);  // cancelled: send at once
    }
    heartbeat_due_ = false;
    if (stopped_) break;
    if (token_.empty() || !mtls_ || revoked_) continue;
    HttpsRequest req{"POST", fmt::format("/api/v1/proxies/{}/heartbeat", id_), token_, heartbeatBody(), 10s};
    auto r = co_await beat_conn_->request(mtls_, std::move(req));
    ++m_heartbeats_;
    m_beat_connects_ = beat_conn_->connects();
    m_beat_resumed_ = beat_conn_->resumed();
    if (!r) spdlog::debug("manager: heartbeat failed: {}", r.error().message);
    else if (r->status != 200) spdlog::debug("manager: heartbeat answered {}", problemText(r->status, r->body));
  }
  heartbeat_wake_ = nullptr;
}

std::string Agent::metricsText() const {
  return fmt::format(
      "# HELP marchproxy_manager_applied_version Config version from the manager being served (0: none yet).\n"
      "# TYPE marchproxy_manager_applied_version gauge\nmarchproxy_manager_applied_version {}\n"
      "# HELP marchproxy_manager_last_apply_timestamp_seconds When a snapshot from the manager was last applied.\n"
      "# TYPE marchproxy_manager_last_apply_timestamp_seconds gauge\nmarchproxy_manager_last_apply_timestamp_seconds {}\n"
      "# HELP marchproxy_manager_reachable 1 when the last call to the manager got an answer.\n"
      "# TYPE marchproxy_manager_reachable gauge\nmarchproxy_manager_reachable {}\n"
      "# HELP marchproxy_manager_apply_failures_total Snapshots from the manager this proxy refused.\n"
      "# TYPE marchproxy_manager_apply_failures_total counter\nmarchproxy_manager_apply_failures_total {}\n"
      "# HELP marchproxy_manager_registrations_total Registrations with the manager (first and re-registrations).\n"
      "# TYPE marchproxy_manager_registrations_total counter\nmarchproxy_manager_registrations_total {}\n"
      "# HELP marchproxy_manager_heartbeats_total Heartbeats sent to the manager (answered or not).\n"
      "# TYPE marchproxy_manager_heartbeats_total counter\nmarchproxy_manager_heartbeats_total {}\n"
      "# HELP marchproxy_manager_connections_total Connections opened to the manager's control listener, by loop "
      "(kept alive between calls).\n"
      "# TYPE marchproxy_manager_connections_total counter\n"
      "marchproxy_manager_connections_total{{loop=\"config\"}} {}\n"
      "marchproxy_manager_connections_total{{loop=\"heartbeat\"}} {}\n"
      "# HELP marchproxy_manager_tls_resumptions_total Of those connections, the ones that resumed a TLS session.\n"
      "# TYPE marchproxy_manager_tls_resumptions_total counter\n"
      "marchproxy_manager_tls_resumptions_total{{loop=\"config\"}} {}\n"
      "marchproxy_manager_tls_resumptions_total{{loop=\"heartbeat\"}} {}\n",
      m_applied_version_.load(), m_last_apply_unix_.load(), m_reachable_.load(), m_apply_failures_.load(),
      m_registrations_.load(), m_heartbeats_.load(), m_poll_connects_.load(), m_beat_connects_.load(),
      m_poll_resumed_.load(), m_beat_resumed_.load());
}

}  // namespace marchproxy::control
