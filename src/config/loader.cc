#include "config/loader.h"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <unordered_set>

#include "common/base/duration.h"
#include "config/syntax.h"
#include "config/yaml_document.h"

namespace marchproxy::config {

namespace {

using namespace syntax;  // NOLINT(google-build-using-namespace)
using yaml::Value;

// A document shares one value between an anchor and its aliases; walking the tree expands them. The
// budget keeps a few hundred bytes of "billion laughs" from costing minutes and gigabytes: a file
// without aliases has fewer values than bytes, so it never comes near; aliases may add a fixed
// allowance on top.
constexpr size_t kExtraValues = 100'000;
constexpr size_t kExtraBytes = 4 << 20;

std::optional<bool> parseBool(std::string_view s) {
  for (auto t : {"true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON"})
    if (s == t) return true;
  for (auto f : {"false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF"})
    if (s == f) return false;
  return std::nullopt;
}

bool looksNumeric(std::string_view s) {
  if (!s.empty() && (s[0] == '-' || s[0] == '+')) s.remove_prefix(1);
  if (s.empty()) return false;
  bool digit = false;
  for (char c : s) {
    if (c >= '0' && c <= '9')
      digit = true;
    else if (c != '.' && c != 'e' && c != 'E' && c != '-' && c != '+')
      return false;
  }
  return digit;
}

std::string describe(const Value& n) {
  switch (n.kind) {
    case Value::Kind::kNull:
      return "null";
    case Value::Kind::kList:
      return "a list";
    case Value::Kind::kMap:
      return "a map";
    case Value::Kind::kScalar:
      if (n.quoted) return "a string";
      if (parseBool(n.text)) return "a boolean";
      if (looksNumeric(n.text)) return "a number";
      return "a string";
  }
  return "nothing";
}

std::string join(const std::vector<std::string_view>& words, std::string_view last) {
  std::string out;
  for (size_t i = 0; i < words.size(); ++i) {
    if (i > 0) out += i + 1 == words.size() ? std::string(" ") + std::string(last) + " " : ", ";
    out += words[i];
  }
  return out;
}

template <typename E, size_t N>
std::vector<std::string_view> namesOf(const Spelling<E> (&table)[N]) {
  std::vector<std::string_view> out;
  for (const auto& s : table) out.push_back(s.name);
  return out;
}

std::string child(const std::string& path, std::string_view key) {
  return path.empty() ? std::string(key) : path + "." + std::string(key);
}

std::string index(const std::string& path, size_t i) {
  return fmt::format("{}[{}]", path, i);
}

// Text -> Snapshot, one field at a time. Reports type errors, unknown and missing fields and
// syntax that can only be judged on the text (a port written "80a"); rules on values that a
// Snapshot can hold (ranges, references) are validate()'s, so that snapshots built in code get the
// same checks. Every value read records its position, so validate() can point at its line too.
class Decoder {
 public:
  Decoder(const yaml::Document& doc, size_t textBytes, detail::PositionIndex& positions,
          std::vector<Diagnostic>& errors, std::unordered_set<std::string>& poisoned)
      : doc_(doc),
        positions_(positions),
        errors_(errors),
        poisoned_(poisoned),
        maxValues_(textBytes + kExtraValues),
        maxBytes_(2 * textBytes + kExtraBytes) {}

  void snapshot(const Value& root, Snapshot& s, std::optional<std::string>& declaredHash) {
    rootPos_ = root.pos;
    positions_[""] = rootPos_;
    if (!root.isMap()) {
      errorAt(rootPos_, "", "expected a map of settings at the top level, got " + describe(root));
      return;
    }
    map(root, "",
        {
            {"schema", [&](auto& n, auto& p) { integer(n, p, s.schema, 0, 1'000'000); }, true},
            {"version", [&](auto& n, auto& p) { integer(n, p, s.version, 0, UINT64_MAX); }},
            {"hash", [&](auto& n, auto& p) { str(n, p, declaredHash.emplace()); }},
            {"workers", [&](auto& n, auto& p) { integer(n, p, s.workers, 0, kMaxWorkers); }},
            {"cpu_affinity", [&](auto& n, auto& p) { cpuAffinity(n, p, s.cpu_affinity); }},
            {"admin", [&](auto& n, auto& p) { admin(n, p, s.admin); }},
            {"listeners", [&](auto& n, auto& p) { listeners(n, p, s.listeners); }, true},
            {"virtual_hosts", [&](auto& n, auto& p) { virtualHosts(n, p, s.virtual_hosts); }},
            {"clusters", [&](auto& n, auto& p) { clusters(n, p, s.clusters); }},
            {"forwarding", [&](auto& n, auto& p) { forwarding(n, p, s.forwarding); }},
            {"limits", [&](auto& n, auto& p) { limits(n, p, s.limits); }},
            {"timeouts", [&](auto& n, auto& p) { timeouts(n, p, s.timeouts); }},
            {"http2", [&](auto& n, auto& p) { http2(n, p, s.http2); }},
            {"access_log", [&](auto& n, auto& p) { accessLog(n, p, s.access_log); }},
            {"fast_path", [&](auto& n, auto& p) { fastPath(n, p, s.fast_path); }},
            {"redis", [&](auto& n, auto& p) { redis(n, p, s.redis.emplace()); }},
        },
        {{"schema", "missing required field \"schema\" (add \"schema: 1\" at the top)"}},
        /*extensions=*/true);
  }

 private:
  using Reader = std::function<void(const Value&, const std::string&)>;
  struct Field {
    std::string_view key;
    Reader read;
    bool required = false;
  };
  struct CustomMissing {
    std::string_view key;
    std::string_view message;
  };
  using Seen = std::vector<std::string_view>;

  static bool has(const Seen& seen, std::string_view key) {
    return std::find(seen.begin(), seen.end(), key) != seen.end();
  }

  // The keys of `group` present, in file order (so "the second one" is the second the user wrote).
  static std::vector<std::string_view> among(const Seen& seen,
                                             std::initializer_list<std::string_view> group) {
    std::vector<std::string_view> out;
    for (auto k : seen)
      if (std::find(group.begin(), group.end(), k) != group.end()) out.push_back(k);
    return out;
  }

  // ------------------------------------------------------------ reporting

  SourcePos locate(const std::string& path) const {
    std::string p = path;
    while (true) {
      auto it = positions_.find(p);
      if (it != positions_.end()) return it->second;
      size_t cut = p.find_last_of(".[");
      if (cut == std::string::npos) break;
      p.resize(cut);
    }
    return rootPos_;
  }

  // `poison`: validate() stays quiet about this path and below (see isPoisoned()). Not for errors
  // about a map's keys, which leave the map's values intact.
  void errorAt(SourcePos at, const std::string& path, std::string message, bool poison = true) {
    if (exhausted_) return;  // what is left half-read would only produce noise
    errors_.push_back({at.line, at.column, path, std::move(message)});
    if (poison) poisoned_.insert(path);
  }
  void error(const std::string& path, std::string message) {
    errorAt(locate(path), path, std::move(message));
  }

  void typeError(const Value& n, const std::string& path, std::string_view expected) {
    std::string message = fmt::format("expected {}, got {}", expected, describe(n));
    if (n.isNull()) message += " (write \"\" for an empty string, [] for an empty list)";
    error(path, std::move(message));
  }

  // False once the expansion budget is spent; the one error about it is reported then.
  bool spend(size_t values, size_t bytes) {
    if (exhausted_) return false;
    values_ += values;
    bytes_ += bytes;
    if (values_ > maxValues_ || bytes_ > maxBytes_) {
      errorAt(rootPos_, "", "the config is too large once YAML aliases are expanded");
      exhausted_ = true;
      return false;
    }
    return true;
  }

  // ------------------------------------------------------------ structure

  // Walks a map once, in file order: unknown keys (with a suggestion), duplicate keys and missing
  // required keys are errors; each known key's value is handed to its reader. Returns the keys
  // present, or nullopt when the node is not a map.
  std::optional<Seen> map(const Value& n, const std::string& path, const std::vector<Field>& fields,
                          const std::vector<CustomMissing>& customMissing = {}, bool extensions = false) {
    if (!n.isMap()) {
      typeError(n, path, "a map");
      return std::nullopt;
    }
    Seen seen;
    for (size_t i = 0; i + 1 < n.items.size(); i += 2) {
      if (!spend(1, 0)) return seen;
      const Value& key = doc_.at(n.items[i]);
      const Value& value = doc_.at(n.items[i + 1]);
      SourcePos keyPos = key.pos;
      if (!key.isScalar()) {
        errorAt(keyPos, path, "keys must be plain names, got " + describe(key), false);
        continue;
      }
      const std::string& name = key.text;
      // Top-level "x-" keys are ignored: the place for YAML anchors that other sections alias.
      if (extensions && name.starts_with("x-")) continue;
      auto field = std::find_if(fields.begin(), fields.end(), [&](const Field& f) { return f.key == name; });
      if (field == fields.end()) {
        std::vector<std::string_view> keys;
        for (const auto& f : fields) keys.push_back(f.key);
        std::string message = "unknown field " + quote(name);
        if (auto guess = closest(name, keys))
          message += fmt::format(" (did you mean \"{}\"?)", *guess);
        else
          message += " (expected one of: " + join(keys, "or") + ")";
        errorAt(keyPos, path, std::move(message), false);
        continue;
      }
      if (has(seen, field->key)) {
        errorAt(keyPos, path, "duplicate field " + quote(name), false);
        continue;
      }
      seen.push_back(field->key);
      std::string childPath = child(path, field->key);
      // A null value's own mark points past the key, often at the next line; the key is where the
      // user looks.
      positions_[childPath] = value.isNull() || value.pos.line == 0 ? keyPos : value.pos;
      field->read(value, childPath);
    }
    SourcePos mapPos = locate(path);
    for (const auto& f : fields) {
      if (!f.required || has(seen, f.key)) continue;
      auto custom = std::find_if(customMissing.begin(), customMissing.end(),
                                 [&](const CustomMissing& c) { return c.key == f.key; });
      std::string message = custom != customMissing.end() ? std::string(custom->message)
                                                          : "missing required field " + quote(f.key);
      errorAt(mapPos, path, std::move(message), false);
      poisoned_.insert(child(path, f.key));
    }
    return seen;
  }

  using Each = std::function<void(const Value&, const std::string&, size_t)>;
  bool list(const Value& n, const std::string& path, const Each& each) {
    if (!n.isList()) {
      typeError(n, path, "a list");
      return false;
    }
    for (size_t i = 0; i < n.items.size(); ++i) {
      if (!spend(1, 0)) return false;
      std::string p = index(path, i);
      const Value& e = doc_.at(n.items[i]);
      positions_[p] = e.pos.line ? e.pos : locate(path);
      each(e, p, i);
    }
    return true;
  }

  // ------------------------------------------------------------ scalars

  bool str(const Value& n, const std::string& path, std::string& out) {
    if (!n.isScalar()) {
      typeError(n, path, "a string");
      return false;
    }
    const std::string& v = n.text;
    if (!spend(0, v.size())) return false;
    if (!isValidUtf8(v)) {
      error(path, "must be valid UTF-8");
      return false;
    }
    out = v;
    return true;
  }

  bool optStr(const Value& n, const std::string& path, std::optional<std::string>& out) {
    std::string v;
    if (!str(n, path, v)) return false;
    out = std::move(v);
    return true;
  }

  bool boolean(const Value& n, const std::string& path, bool& out) {
    std::optional<bool> b;
    if (n.isScalar() && !n.quoted) b = parseBool(n.text);
    if (!b) {
      typeError(n, path, "a boolean (true or false)");
      return false;
    }
    out = *b;
    return true;
  }

  template <typename T>
  bool integer(const Value& n, const std::string& path, T& out, uint64_t lo, uint64_t hi,
               std::string_view rangeMessage = {}) {
    if (!n.isScalar() || n.quoted) {
      typeError(n, path, "a number");
      return false;
    }
    std::string_view s = n.text;
    bool negative = false;
    if (!s.empty() && s[0] == '-') {
      negative = true;
      s.remove_prefix(1);
    }
    bool digits = !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
    if (!digits) {
      if (looksNumeric(n.text))
        error(path, "must be a whole number");
      else
        typeError(n, path, "a number");
      return false;
    }
    uint64_t v = 0;
    bool overflow = s.size() > 20;
    for (char c : s) {
      if (overflow) break;
      auto d = static_cast<uint64_t>(c - '0');
      if (v > (UINT64_MAX - d) / 10)
        overflow = true;
      else
        v = v * 10 + d;
    }
    bool isZero = !overflow && v == 0;
    if (overflow || (negative && !isZero) || v < lo || v > hi) {
      error(path, rangeMessage.empty() ? fmt::format("must be between {} and {}", lo, hi)
                                       : std::string(rangeMessage));
      return false;
    }
    out = static_cast<T>(v);
    return true;
  }

  bool duration(const Value& n, const std::string& path, Millis& out) {
    if (!n.isScalar()) {
      typeError(n, path, "a duration like \"5s\"");
      return false;
    }
    const std::string& s = n.text;
    if (s == "0") {
      out = Millis{0};
      return true;
    }
    if (auto d = parseDuration(s)) {
      out = *d;
      return true;
    }
    if (!s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; }))
      error(path, "needs a unit, like \"" + s + "s\" or \"" + s + "ms\"");
    else
      error(path, "expected a duration like \"5s\", \"250ms\" or \"1m30s\", got " + quote(s));
    return false;
  }

  template <typename T>
  bool size(const Value& n, const std::string& path, T& out) {
    if (!n.isScalar()) {
      typeError(n, path, "a size like 65536 or 64KiB");
      return false;
    }
    std::string why;
    auto v = parseSize(n.text, &why);
    if (!v) {
      error(path, why);
      return false;
    }
    if (*v > std::numeric_limits<T>::max()) {
      error(path, "is too large");
      return false;
    }
    out = static_cast<T>(*v);
    return true;
  }

  template <typename E, size_t N>
  bool enumeration(const Value& n, const std::string& path, const Spelling<E> (&table)[N], E& out,
                   std::string_view what) {
    std::string s;
    if (!str(n, path, s)) return false;
    if (auto v = valueOf(table, s)) {
      out = *v;
      return true;
    }
    auto names = namesOf(table);
    std::string message = fmt::format("unknown {} {}", what, quote(s));
    if (auto guess = closest(s, names))
      message += fmt::format(" (did you mean \"{}\"?)", *guess);
    else
      message += " (expected " + join(names, "or") + ")";
    error(path, std::move(message));
    return false;
  }

  void strList(const Value& n, const std::string& path, std::vector<std::string>& out,
               std::string (*normalise)(std::string_view) = nullptr) {
    out.clear();
    list(n, path, [&](const Value& e, const std::string& p, size_t) {
      std::string v;
      str(e, p, v);  // keep the slot even on error, so indexes match the file
      out.push_back(normalise != nullptr ? normalise(v) : std::move(v));
    });
  }

  // `admin: off` is short for `admin: {enabled: false}` (and `on` for enabled with defaults).
  bool toggle(const Value& n, bool& enabled) {
    if (n.isScalar() && !n.quoted) {
      if (auto b = parseBool(n.text)) {
        enabled = *b;
        return true;
      }
    }
    return false;
  }

  // ------------------------------------------------------------ sections

  void admin(const Value& n, const std::string& path, Admin& a) {
    if (toggle(n, a.enabled)) return;
    map(n, path,
        {
            {"enabled", [&](auto& v, auto& p) { boolean(v, p, a.enabled); }},
            {"address", [&](auto& v, auto& p) { address(v, p, a.address); }},
            {"port", [&](auto& v, auto& p) { integer(v, p, a.port, 0, 65535); }},
        });
  }

  // Listen addresses are IP literals; "[::1]" is accepted and stored as "::1".
  void address(const Value& n, const std::string& path, std::string& out) {
    if (!str(n, path, out)) return;
    if (out.size() >= 2 && out.front() == '[' && out.back() == ']') out = out.substr(1, out.size() - 2);
  }

  void listeners(const Value& n, const std::string& path, std::vector<Listener>& out) {
    list(n, path, [&](const Value& e, const std::string& p, size_t) {
      Listener& l = out.emplace_back();
      l.pos = locate(p);
      map(e, p,
          {
              {"name", [&](auto& v, auto& q) { str(v, q, l.name); }, true},
              {"address", [&](auto& v, auto& q) { address(v, q, l.address); }},
              {"port", [&](auto& v, auto& q) { integer(v, q, l.port, 0, 65535); }, true},
              {"tls", [&](auto& v, auto& q) { listenerTls(v, q, l.tls.emplace()); }},
              {"proxy_protocol", [&](auto& v, auto& q) { proxyProtocol(v, q, l.proxy_protocol); }},
              {"h2c", [&](auto& v, auto& q) { boolean(v, q, l.h2c); }},
          });
    });
  }

  void proxyProtocol(const Value& n, const std::string& path, ProxyProtocol& pp) {
    map(n, path,
        {
            {"accept",
             [&](auto& v, auto& p) { enumeration(v, p, kProxyProtocolModes, pp.accept, "PROXY protocol mode"); }},
            {"trusted", [&](auto& v, auto& p) { strList(v, p, pp.trusted); }},
        });
  }

  void requestRateLimit(const Value& n, const std::string& path, RequestRateLimit& rl) {
    map(n, path,
        {
            {"requests_per_second",
             [&](auto& v, auto& p) { integer(v, p, rl.requests_per_second, 0, kMaxRequestsPerSecond); }},
            {"burst", [&](auto& v, auto& p) { integer(v, p, rl.burst, 0, kMaxRequestsPerSecond); }},
            {"key", [&](auto& v, auto& p) { enumeration(v, p, kRateLimitKeys, rl.key, "rate-limit key"); }},
            {"header",
             [&](auto& v, auto& p) {
               if (str(v, p, rl.header)) rl.header = toLower(rl.header);
             }},
            {"scope",
             [&](auto& v, auto& p) { enumeration(v, p, kRateLimitScopes, rl.scope, "rate-limit scope"); }},
            {"ipv6_prefix", [&](auto& v, auto& p) { integer(v, p, rl.ipv6_prefix, 1, 128); }},
            {"per_ip_ceiling", [&](auto& v, auto& p) { integer(v, p, rl.per_ip_ceiling, 0, kMaxPerIpCeiling); }},
        });
  }

  void redis(const Value& n, const std::string& path, Redis& r) {
    map(n, path,
        {
            {"address", [&](auto& v, auto& p) { address(v, p, r.address); }, true},
            {"port", [&](auto& v, auto& p) { integer(v, p, r.port, 1, 65535); }},
            {"timeout", [&](auto& v, auto& p) { duration(v, p, r.timeout); }},
            {"password_file", [&](auto& v, auto& p) { str(v, p, r.password_file); }},
            {"password_env", [&](auto& v, auto& p) { str(v, p, r.password_env); }},
        });
  }

  void listenerTls(const Value& n, const std::string& path, ListenerTls& t) {
    map(n, path,
        {
            {"certificates",
             [&](auto& v, auto& p) {
               list(v, p, [&](const Value& e, const std::string& q, size_t) {
                 TlsCertificate& c = t.certificates.emplace_back();
                 c.pos = locate(q);
                 map(e, q,
                     {
                         {"cert", [&](auto& x, auto& r) { str(x, r, c.cert); }, true},
                         {"key", [&](auto& x, auto& r) { str(x, r, c.key); }, true},
                         {"names", [&](auto& x, auto& r) { strList(x, r, c.names, toLower); }},
                     });
               });
             },
             true},
            {"default_certificate", [&](auto& v, auto& p) { integer(v, p, t.default_certificate, 0, 1000); }},
            {"min_version", [&](auto& v, auto& p) { str(v, p, t.min_version); }},
            {"ciphers", [&](auto& v, auto& p) { str(v, p, t.ciphers); }},
            {"groups", [&](auto& v, auto& p) { strList(v, p, t.groups); }},
            {"alpn", [&](auto& v, auto& p) { strList(v, p, t.alpn); }},
            {"session_tickets", [&](auto& v, auto& p) { boolean(v, p, t.session_tickets); }},
            {"ticket_key_rotation", [&](auto& v, auto& p) { duration(v, p, t.ticket_key_rotation); }},
            {"handshake_timeout", [&](auto& v, auto& p) { duration(v, p, t.handshake_timeout); }},
            {"client_auth",
             [&](auto& v, auto& p) {
               ClientAuth& a = t.client_auth;
               map(v, p,
                   {
                       {"mode", [&](auto& x, auto& q) { enumeration(x, q, kClientAuthModes, a.mode, "mode"); }, true},
                       {"ca", [&](auto& x, auto& q) { str(x, q, a.ca); }},
                       {"crl", [&](auto& x, auto& q) { str(x, q, a.crl); }},
                   });
             }},
        });
  }

  void headerValues(const Value& n, const std::string& path, std::vector<HeaderValue>& out) {
    if (n.isMap()) {
      for (size_t k = 0; k + 1 < n.items.size(); k += 2) {
        if (!spend(1, 0)) return;
        std::string p = index(path, k / 2);
        const Value& name = doc_.at(n.items[k]);
        const Value& value = doc_.at(n.items[k + 1]);
        positions_[p] = name.pos;
        HeaderValue& h = out.emplace_back();
        if (!name.isScalar()) {
          error(p, "header names must be strings, got " + describe(name));
          continue;
        }
        h.name = name.text;
        if (!spend(0, h.name.size())) return;
        str(value, p, h.value);
      }
      return;
    }
    if (!n.isList()) {
      typeError(n, path, "a map of header name to value");
      return;
    }
    // The list form, [{name: set-cookie, value: a}, {name: set-cookie, value: b}], can add one
    // header twice, which a map cannot express.
    list(n, path, [&](const Value& e, const std::string& p, size_t) {
      HeaderValue& h = out.emplace_back();
      map(e, p,
          {
              {"name", [&](auto& v, auto& q) { str(v, q, h.name); }, true},
              {"value", [&](auto& v, auto& q) { str(v, q, h.value); }, true},
          });
    });
  }

  void headerRewrite(const Value& n, const std::string& path, HeaderRewrite& h) {
    map(n, path,
        {
            {"remove", [&](auto& v, auto& p) { strList(v, p, h.remove); }},
            {"set", [&](auto& v, auto& p) { headerValues(v, p, h.set); }},
            {"add", [&](auto& v, auto& p) { headerValues(v, p, h.add); }},
        });
  }

  void virtualHosts(const Value& n, const std::string& path, std::vector<VirtualHost>& out) {
    list(n, path, [&](const Value& e, const std::string& p, size_t) {
      VirtualHost& v = out.emplace_back();
      v.pos = locate(p);
      std::vector<char> named;  // per route: name written in the file
      bool hasName = false;
      auto seen =
          map(e, p,
              {
                  {"name", [&](auto& x, auto& q) { hasName = str(x, q, v.name); }, true},
                  {"domains", [&](auto& x, auto& q) { strList(x, q, v.domains, toLower); }, true},
                  {"request_headers", [&](auto& x, auto& q) { headerRewrite(x, q, v.request_headers); }},
                  {"response_headers", [&](auto& x, auto& q) { headerRewrite(x, q, v.response_headers); }},
                  {"routes", [&](auto& x, auto& q) { routes(x, q, v.routes, named); }, true},
                  {"redirect_to_https", [&](auto& x, auto& q) { integer(x, q, v.redirect_to_https, 0, 999); }},
              });
      if (!seen) return;
      // Routes may come before the name in the file, so default their names once the map is read.
      for (size_t i = 0; i < v.routes.size() && i < named.size(); ++i) {
        if (named[i]) continue;
        if (hasName)
          v.routes[i].name = fmt::format("{}/{}", v.name, i);
        else
          poisoned_.insert(fmt::format("{}.routes[{}].name", p, i));
      }
    });
  }

  void routes(const Value& n, const std::string& path, std::vector<Route>& out, std::vector<char>& named) {
    list(n, path, [&](const Value& e, const std::string& p, size_t) {
      Route& r = out.emplace_back();
      named.push_back(0);
      r.pos = locate(p);
      route(e, p, r, named.back());
    });
  }

  void route(const Value& n, const std::string& path, Route& r, char& named) {
    auto seen =
        map(n, path,
            {
                {"name",
                 [&](auto& v, auto& p) {
                   named = 1;
                   str(v, p, r.name);
                 }},
                {"match", [&](auto& v, auto& p) { match(v, p, r.match); }},
                {"forward",
                 [&](auto& v, auto& p) {
                   r.action = ActionKind::kForward;
                   forward(v, p, r.forward);
                 }},
                {"redirect",
                 [&](auto& v, auto& p) {
                   r.action = ActionKind::kRedirect;
                   redirect(v, p, r.redirect);
                 }},
                {"direct_response",
                 [&](auto& v, auto& p) {
                   r.action = ActionKind::kDirectResponse;
                   direct(v, p, r.direct);
                 }},
                {"request_headers", [&](auto& v, auto& p) { headerRewrite(v, p, r.request_headers); }},
                {"response_headers", [&](auto& v, auto& p) { headerRewrite(v, p, r.response_headers); }},
                {"allowed_client_names", [&](auto& v, auto& p) { strList(v, p, r.allowed_client_names); }},
                {"rate_limit", [&](auto& v, auto& p) { requestRateLimit(v, p, r.rate_limit.emplace()); }},
                {"websocket", [&](auto& v, auto& p) { boolean(v, p, r.websocket); }},
                {"websocket_idle_timeout", [&](auto& v, auto& p) { duration(v, p, r.websocket_idle_timeout); }},
            });
    if (!seen) {
      poisoned_.insert(path);
      return;
    }
    std::vector<std::string_view> actions = among(*seen, {"forward", "redirect", "direct_response"});
    if (actions.empty()) {
      error(path, "needs an action: one of \"forward\", \"redirect\" or \"direct_response\"");
      poisoned_.insert(path + ".forward");
    } else if (actions.size() > 1) {
      error(child(path, actions[1]),
            fmt::format("a route has one action, and this one already has \"{}\"", actions[0]));
    }
  }

  void match(const Value& n, const std::string& path, RouteMatch& m) {
    auto pathField = [&](PathMatch kind) {
      return [&, kind](const Value& v, const std::string& p) {
        m.path_kind = kind;
        str(v, p, m.path);
      };
    };
    auto seen = map(n, path,
                    {
                        {"prefix", pathField(PathMatch::kPrefix)},
                        {"exact", pathField(PathMatch::kExact)},
                        {"regex", pathField(PathMatch::kRegex)},
                        {"methods", [&](auto& v, auto& p) { strList(v, p, m.methods, toUpper); }},
                        {"headers", [&](auto& v, auto& p) { headerMatches(v, p, m.headers); }},
                    });
    if (!seen) return;
    std::vector<std::string_view> kinds = among(*seen, {"prefix", "exact", "regex"});
    if (kinds.size() > 1)
      error(child(path, kinds[1]),
            fmt::format("a route matches one path kind, and this one already has \"{}\"", kinds[0]));
  }

  void headerMatches(const Value& n, const std::string& path, std::vector<HeaderMatch>& out) {
    list(n, path, [&](const Value& e, const std::string& p, size_t) {
      HeaderMatch& h = out.emplace_back();
      bool present = true;
      auto valueField = [&](HeaderMatch::Kind kind) {
        return [&, kind](const Value& v, const std::string& q) {
          h.kind = kind;
          str(v, q, h.value);
        };
      };
      auto seen = map(e, p,
                      {
                          {"name",
                           [&](auto& v, auto& q) {
                             if (str(v, q, h.name)) h.name = toLower(h.name);
                           },
                           true},
                          {"exact", valueField(HeaderMatch::Kind::kExact)},
                          {"prefix", valueField(HeaderMatch::Kind::kPrefix)},
                          {"regex", valueField(HeaderMatch::Kind::kRegex)},
                          {"present",
                           [&](auto& v, auto& q) {
                             h.kind = HeaderMatch::Kind::kPresent;
                             boolean(v, q, present);
                           }},
                          {"invert", [&](auto& v, auto& q) { boolean(v, q, h.invert); }},
                      });
      if (!seen) return;
      // `present: false` is the same match as `present: true, invert: true`.
      if (h.kind == HeaderMatch::Kind::kPresent && !present) h.invert = !h.invert;
      std::vector<std::string_view> kinds = among(*seen, {"exact", "prefix", "regex", "present"});
      if (kinds.empty())
        error(p, "needs one of \"exact\", \"prefix\", \"regex\" or \"present\"");
      else if (kinds.size() > 1)
        error(child(p, kinds[1]),
              fmt::format("a header match has one kind, and this one already has \"{}\"", kinds[0]));
    });
  }

  void forward(const Value& n, const std::string& path, ForwardAction& f) {
    map(n, path,
        {
            {"cluster", [&](auto& v, auto& p) { str(v, p, f.cluster); }, true},
            {"prefix_rewrite", [&](auto& v, auto& p) { optStr(v, p, f.prefix_rewrite); }},
            {"host_rewrite", [&](auto& v, auto& p) { optStr(v, p, f.host_rewrite); }},
            {"timeout", [&](auto& v, auto& p) { duration(v, p, f.timeout); }},
            {"retries", [&](auto& v, auto& p) { retries(v, p, f.retry); }},
        });
  }

  void retries(const Value& n, const std::string& path, RetryPolicy& r) {
    map(n, path,
        {
            {"attempts", [&](auto& v, auto& p) { integer(v, p, r.attempts, 0, kMaxRetryAttempts); }},
            {"on", [&](auto& v, auto& p) { retryOn(v, p, r.on); }},
            {"per_try_timeout", [&](auto& v, auto& p) { duration(v, p, r.per_try_timeout); }},
        });
  }

  void retryOn(const Value& n, const std::string& path, uint8_t& on) {
    on = 0;
    list(n, path, [&](const Value& e, const std::string& p, size_t) {
      if (!e.isScalar()) {  // 502 may be written as a number or a string
        typeError(e, p, "a retry condition");
        return;
      }
      std::string name = e.text;
      if (auto v = valueOf(kRetryOn, name)) {
        on |= static_cast<uint8_t>(*v);
        return;
      }
      auto names = namesOf(kRetryOn);
      std::string message = "unknown retry condition " + quote(name);
      if (auto guess = closest(name, names))
        message += fmt::format(" (did you mean \"{}\"?)", *guess);
      else
        message += " (expected " + join(names, "or") + ")";
      error(p, std::move(message));
    });
  }

  void redirect(const Value& n, const std::string& path, RedirectAction& d) {
    map(n, path,
        {
            {"code",
             [&](auto& v, auto& p) {
               integer(v, p, d.code, 0, 999, "must be one of 301, 302, 303, 307, 308");
             }},
            {"scheme",
             [&](auto& v, auto& p) {
               if (optStr(v, p, d.scheme)) d.scheme = toLower(*d.scheme);
             }},
            {"host", [&](auto& v, auto& p) { optStr(v, p, d.host); }},
            {"path", [&](auto& v, auto& p) { optStr(v, p, d.path); }},
            {"prefix_rewrite", [&](auto& v, auto& p) { optStr(v, p, d.prefix_rewrite); }},
            {"strip_query", [&](auto& v, auto& p) { boolean(v, p, d.strip_query); }},
        });
  }

  void direct(const Value& n, const std::string& path, DirectResponseAction& d) {
    map(n, path,
        {
            {"status", [&](auto& v, auto& p) { integer(v, p, d.status, 200, 599); }},
            {"body", [&](auto& v, auto& p) { str(v, p, d.body); }},
            {"content_type", [&](auto& v, auto& p) { str(v, p, d.content_type); }},
        });
  }

  void clusters(const Value& n, const std::string& path, std::vector<Cluster>& out) {
    list(n, path, [&](const Value& e, const std::string& p, size_t) {
      Cluster& c = out.emplace_back();
      c.pos = locate(p);
      map(e, p,
          {
              {"name", [&](auto& v, auto& q) { str(v, q, c.name); }, true},
              {"lb",
               [&](auto& v, auto& q) { enumeration(v, q, kLbPolicies, c.lb, "load-balancing policy"); }},
              {"protocol",
               [&](auto& v, auto& q) { enumeration(v, q, kClusterProtocols, c.protocol, "protocol"); }},
              {"hash_on", [&](auto& v, auto& q) { hashOn(v, q, c.hash); }},
              {"endpoints", [&](auto& v, auto& q) { endpoints(v, q, c.endpoints); }, true},
              {"health_check", [&](auto& v, auto& q) { healthCheck(v, q, c.health_check); }},
              {"outlier_detection", [&](auto& v, auto& q) { outlier(v, q, c.outlier); }},
              {"timeouts", [&](auto& v, auto& q) { clusterTimeouts(v, q, c.timeouts); }},
              {"max_idle_connections",
               [&](auto& v, auto& q) { integer(v, q, c.max_idle_connections, 0, kMaxIdleConnections); }},
              {"retry_budget_percent",
               [&](auto& v, auto& q) { integer(v, q, c.retry_budget_percent, 0, 100); }},
              {"tls",
               [&](auto& v, auto& q) {
                 UpstreamTls& t = c.tls.emplace();
                 map(v, q,
                     {
                         {"sni", [&](auto& x, auto& r) { str(x, r, t.sni); }},
                         {"verify", [&](auto& x, auto& r) { boolean(x, r, t.verify); }},
                         {"ca", [&](auto& x, auto& r) { str(x, r, t.ca); }},
                         {"client_cert", [&](auto& x, auto& r) { str(x, r, t.client_cert); }},
                         {"client_key", [&](auto& x, auto& r) { str(x, r, t.client_key); }},
                     });
               }},
              {"send_proxy_protocol",
               [&](auto& v, auto& q) {
                 enumeration(v, q, kSendProxyProtocols, c.send_proxy_protocol, "PROXY protocol version");
               }},
          });
    });
  }

  void hashOn(const Value& n, const std::string& path, HashPolicy& h) {
    std::string s;
    if (!str(n, path, s)) return;
    if (s == kHashOnSourceIp) {
      h = {};
    } else if (s.starts_with(kHashOnHeaderPrefix) && s.size() > kHashOnHeaderPrefix.size()) {
      h.source = HashPolicy::Source::kHeader;
      h.header = toLower(std::string_view(s).substr(kHashOnHeaderPrefix.size()));
    } else {
      error(path, "must be \"source_ip\" or \"header:<name>\", like \"header:x-user-id\"");
    }
  }

  void endpoints(const Value& n, const std::string& path, std::vector<Endpoint>& out) {
    list(n, path, [&](const Value& e, const std::string& p, size_t) {
      Endpoint& ep = out.emplace_back();
      ep.pos = locate(p);
      if (e.isScalar()) {
        endpointAddress(e, p, ep);
        return;
      }
      if (!e.isMap()) {
        typeError(e, p, "\"host:port\" or a map with address and weight");
        return;
      }
      auto seen = map(e, p,
                      {
                          {"address", [&](auto& v, auto& q) { endpointAddress(v, q, ep); }, true},
                          {"weight", [&](auto& v, auto& q) { integer(v, q, ep.weight, 1, kMaxWeight); }},
                      });
      if (!seen || !has(*seen, "address")) poisoned_.insert(p);
    });
  }

  void endpointAddress(const Value& n, const std::string& path, Endpoint& ep) {
    // Errors name the endpoint's host or port, as validate() does for snapshots built in code, and
    // an endpoint whose address cannot be read is left out of validate()'s checks altogether.
    std::string endpointPath = path.ends_with(".address") ? path.substr(0, path.size() - 8) : path;
    std::string text;
    if (!str(n, path, text)) {
      poisoned_.insert(endpointPath);
      return;
    }
    std::string why;
    auto hp = parseHostPort(text, &why);
    if (!hp) {
      error(path, quote(text) + " " + why);
      poisoned_.insert(endpointPath);
      return;
    }
    ep.host = toLower(hp->host);
    if (hp->port < 1 || hp->port > 65535)
      error(endpointPath + ".port", "must be between 1 and 65535");
    else
      ep.port = static_cast<uint16_t>(hp->port);
  }

  void healthCheck(const Value& n, const std::string& path, HealthCheck& h) {
    map(n, path,
        {
            {"type", [&](auto& v, auto& p) { enumeration(v, p, kHealthTypes, h.type, "health check type"); }},
            {"path", [&](auto& v, auto& p) { str(v, p, h.path); }},
            {"host", [&](auto& v, auto& p) { str(v, p, h.host); }},
            {"interval", [&](auto& v, auto& p) { duration(v, p, h.interval); }},
            {"timeout", [&](auto& v, auto& p) { duration(v, p, h.timeout); }},
            {"healthy_threshold",
             [&](auto& v, auto& p) { integer(v, p, h.healthy_threshold, 1, kMaxThreshold); }},
            {"unhealthy_threshold",
             [&](auto& v, auto& p) { integer(v, p, h.unhealthy_threshold, 1, kMaxThreshold); }},
            {"expected_status", [&](auto& v, auto& p) { expectedStatus(v, p, h.expected_statuses); }},
        });
  }

  void expectedStatus(const Value& n, const std::string& path, std::vector<std::pair<int, int>>& out) {
    out.clear();
    list(n, path, [&](const Value& e, const std::string& p, size_t) {
      auto bad = [&] {
        error(p, "expected a status like 200, a range like \"200-299\" or a class like \"2xx\"");
      };
      if (!e.isScalar()) {
        bad();
        return;
      }
      std::string_view s = e.text;
      auto number = [](std::string_view d) -> int {
        if (d.size() != 3 || !std::all_of(d.begin(), d.end(), [](char c) { return c >= '0' && c <= '9'; }))
          return -1;
        return (d[0] - '0') * 100 + (d[1] - '0') * 10 + (d[2] - '0');
      };
      int lo, hi;
      if (s.size() == 3 && s[0] >= '1' && s[0] <= '5' && (s.substr(1) == "xx" || s.substr(1) == "XX")) {
        lo = (s[0] - '0') * 100;
        hi = lo + 99;
      } else if (size_t dash = s.find('-'); dash != std::string_view::npos) {
        lo = number(s.substr(0, dash));
        hi = number(s.substr(dash + 1));
      } else {
        lo = hi = number(s);
      }
      if (lo < 0 || hi < 0) {
        bad();
        return;
      }
      out.emplace_back(lo, hi);  // ranges and order are validate()'s
    });
  }

  void outlier(const Value& n, const std::string& path, OutlierDetection& o) {
    if (toggle(n, o.enabled)) return;
    map(n, path,
        {
            {"enabled", [&](auto& v, auto& p) { boolean(v, p, o.enabled); }},
            {"consecutive_5xx", [&](auto& v, auto& p) { integer(v, p, o.consecutive_5xx, 0, 1'000'000); }},
            {"consecutive_connect_failures",
             [&](auto& v, auto& p) { integer(v, p, o.consecutive_connect_failures, 0, 1'000'000); }},
            {"base_ejection_time", [&](auto& v, auto& p) { duration(v, p, o.base_ejection_time); }},
            {"max_ejection_time", [&](auto& v, auto& p) { duration(v, p, o.max_ejection_time); }},
            {"max_ejection_percent",
             [&](auto& v, auto& p) { integer(v, p, o.max_ejection_percent, 0, 100); }},
        });
  }

  void clusterTimeouts(const Value& n, const std::string& path, ClusterTimeouts& t) {
    map(n, path,
        {
            {"connect", [&](auto& v, auto& p) { duration(v, p, t.connect); }},
            {"response", [&](auto& v, auto& p) { duration(v, p, t.response); }},
            {"idle", [&](auto& v, auto& p) { duration(v, p, t.idle); }},
        });
  }

  void forwarding(const Value& n, const std::string& path, Forwarding& f) {
    map(n, path,
        {
            {"x_forwarded_for", [&](auto& v, auto& p) { boolean(v, p, f.x_forwarded_for); }},
            {"x_forwarded_proto", [&](auto& v, auto& p) { boolean(v, p, f.x_forwarded_proto); }},
            {"x_forwarded_host", [&](auto& v, auto& p) { boolean(v, p, f.x_forwarded_host); }},
            {"via", [&](auto& v, auto& p) { boolean(v, p, f.via); }},
            {"trust_downstream", [&](auto& v, auto& p) { boolean(v, p, f.trust_downstream); }},
        });
  }

  void limits(const Value& n, const std::string& path, Limits& l) {
    map(n, path,
        {
            {"max_connections",
             [&](auto& v, auto& p) { integer(v, p, l.max_connections, 1, kMaxConnections); }},
            {"max_request_line", [&](auto& v, auto& p) { size(v, p, l.max_request_line); }},
            {"max_header_bytes", [&](auto& v, auto& p) { size(v, p, l.max_header_bytes); }},
            {"max_headers", [&](auto& v, auto& p) { integer(v, p, l.max_headers, 1, kMaxHeaders); }},
            {"max_body_bytes", [&](auto& v, auto& p) { size(v, p, l.max_body_bytes); }},
            {"max_connections_per_ip",
             [&](auto& v, auto& p) { integer(v, p, l.max_connections_per_ip, 0, kMaxConnections); }},
        });
  }

  void timeouts(const Value& n, const std::string& path, Timeouts& t) {
    map(n, path,
        {
            {"header_read", [&](auto& v, auto& p) { duration(v, p, t.header_read); }},
            {"idle", [&](auto& v, auto& p) { duration(v, p, t.idle); }},
            {"body_read", [&](auto& v, auto& p) { duration(v, p, t.body_read); }},
            {"drain", [&](auto& v, auto& p) { duration(v, p, t.drain); }},
        });
  }

  void http2(const Value& n, const std::string& path, Http2& h) {
    map(n, path,
        {
            {"max_concurrent_streams",
             [&](auto& v, auto& p) { integer(v, p, h.max_concurrent_streams, 1, kMaxH2Streams); }},
            {"initial_stream_window",
             [&](auto& v, auto& p) { size(v, p, h.initial_stream_window); }},
            {"max_frame_size", [&](auto& v, auto& p) { size(v, p, h.max_frame_size); }},
            {"max_header_list_bytes", [&](auto& v, auto& p) { size(v, p, h.max_header_list_bytes); }},
            {"max_resets_per_second",
             [&](auto& v, auto& p) { integer(v, p, h.max_resets_per_second, 1, 1'000'000); }},
            {"max_control_frames_per_second",
             [&](auto& v, auto& p) { integer(v, p, h.max_control_frames_per_second, 1, 1'000'000); }},
            {"max_continuation_frames",
             [&](auto& v, auto& p) { integer(v, p, h.max_continuation_frames, 1, 10'000); }},
            {"idle_timeout", [&](auto& v, auto& p) { duration(v, p, h.idle_timeout); }},
            {"stream_idle_timeout", [&](auto& v, auto& p) { duration(v, p, h.stream_idle_timeout); }},
        });
  }

  void accessLog(const Value& n, const std::string& path, AccessLog& a) {
    if (toggle(n, a.enabled)) return;
    // Writing the section at all means "log": enabled defaults to true here.
    a.enabled = true;
    map(n, path,
        {
            {"enabled", [&](auto& v, auto& p) { boolean(v, p, a.enabled); }},
            {"path", [&](auto& v, auto& p) { str(v, p, a.path); }},
        });
  }

  void rateLimit(const Value& n, const std::string& path, RateLimit& r) {
    map(n, path,
        {
            {"packets_per_second",
             [&](auto& v, auto& p) { integer(v, p, r.packets_per_second, 0, 1'000'000'000); }},
            {"burst", [&](auto& v, auto& p) { integer(v, p, r.burst, 0, 1'000'000'000); }},
        });
  }

  void portList(const Value& n, const std::string& path, std::vector<uint16_t>& out) {
    out.clear();
    list(n, path, [&](const Value& e, const std::string& p, size_t) {
      uint16_t port = 0;
      integer(e, p, port, 1, 65535);
      out.push_back(port);
    });
  }

  // `off`, `auto`, or a list of CPU numbers.
  void cpuAffinity(const Value& n, const std::string& path, CpuAffinity& c) {
    c.pos = n.pos;
    c.cpus.clear();
    if (n.isList()) {
      c.mode = CpuAffinity::Mode::kList;
      list(n, path, [&](const Value& e, const std::string& p, size_t) {
        uint32_t cpu = 0;
        integer(e, p, cpu, 0, kMaxCpu);
        c.cpus.push_back(cpu);
      });
      return;  // an empty list: validate()'s error
    }
    std::string v, message;
    if (!str(n, path, v)) return;
    if (auto mode = cpuAffinityWord(v, n.quoted, &message))
      c.mode = *mode;
    else
      error(path, std::move(message));
  }

  // `routed: off`, or the list of rules (writing the list turns enforcement on; `[]` denies all).
  void routed(const Value& n, const std::string& path, FastPath& f) {
    f.routed.clear();
    if (toggle(n, f.routed_enforce)) {
      if (f.routed_enforce) error(path, "write the list of rules (or [] to refuse every routed connection)");
      return;
    }
    f.routed_enforce = true;
    list(n, path, [&](const Value& e, const std::string& ep, size_t) {
      RoutedRule& r = f.routed.emplace_back();
      r.pos = e.pos;
      map(e, ep,
          {
              {"name", [&](auto& x, auto& xp) { str(x, xp, r.name); }},
              {"sources", [&](auto& x, auto& xp) { strList(x, xp, r.sources); }},
              {"destinations", [&](auto& x, auto& xp) { strList(x, xp, r.destinations); }, true},
              {"protocols", [&](auto& x, auto& xp) { strList(x, xp, r.protocols); }},
              {"ports",
               [&](auto& x, auto& xp) {
                 list(x, xp, [&](const Value& pv, const std::string& pp, size_t) {
                   std::string text;
                   if (!str(pv, pp, text)) return;
                   if (auto range = portRange(text))
                     r.ports.push_back(*range);
                   else
                     error(pp, quote(text) + " is not a port or a range (\"443\", \"8000-8100\"; 1 to 65535)");
                 });
               }},
          });
    });
  }

  void fastPath(const Value& n, const std::string& path, FastPath& f) {
    f.pos = n.pos;
    if (toggle(n, f.enabled)) return;
    // Writing the section at all means "on": enabled defaults to true here.
    f.enabled = true;
    map(n, path,
        {
            {"enabled", [&](auto& v, auto& p) { boolean(v, p, f.enabled); }},
            {"interfaces", [&](auto& v, auto& p) { strList(v, p, f.interfaces); }},
            {"mode", [&](auto& v, auto& p) { enumeration(v, p, kFastPathModes, f.mode, "fast path mode"); }},
            {"deny", [&](auto& v, auto& p) { strList(v, p, f.deny); }},
            {"allow", [&](auto& v, auto& p) { strList(v, p, f.allow); }},
            {"per_source", [&](auto& v, auto& p) { rateLimit(v, p, f.per_source); }},
            {"global", [&](auto& v, auto& p) { rateLimit(v, p, f.global); }},
            {"syn", [&](auto& v, auto& p) { rateLimit(v, p, f.syn); }},
            {"port_filter", [&](auto& v, auto& p) { boolean(v, p, f.port_filter); }},
            {"extra_tcp_ports", [&](auto& v, auto& p) { portList(v, p, f.extra_tcp_ports); }},
            {"extra_udp_ports", [&](auto& v, auto& p) { portList(v, p, f.extra_udp_ports); }},
            {"egress_interfaces", [&](auto& v, auto& p) { strList(v, p, f.egress_interfaces); }},
            {"icmp_echo", [&](auto& v, auto& p) { boolean(v, p, f.icmp_echo); }},
            {"routed", [&](auto& v, auto& p) { routed(v, p, f); }},
            {"dscp",
             [&](auto& v, auto& p) {
               f.dscp.clear();
               list(v, p, [&](const Value& e, const std::string& ep, size_t) {
                 DscpRule& r = f.dscp.emplace_back();
                 r.pos = e.pos;
                 map(e, ep,
                     {
                         {"protocol", [&](auto& x, auto& xp) { str(x, xp, r.protocol); }},
                         {"port", [&](auto& x, auto& xp) { integer(x, xp, r.port, 1, 65535); }, true},
                         {"class",
                          [&](auto& x, auto& xp) {
                            enumeration(x, xp, kDscpClasses, r.dscp_class, "DSCP class");
                          },
                          true},
                     });
               });
             }},
        });
  }

  const yaml::Document& doc_;
  detail::PositionIndex& positions_;
  std::vector<Diagnostic>& errors_;
  std::unordered_set<std::string>& poisoned_;
  SourcePos rootPos_;
  const size_t maxValues_, maxBytes_;
  size_t values_ = 0, bytes_ = 0;
  bool exhausted_ = false;
};

// A validate() diagnostic about a value the decoder already reported (or left at a default because
// it could not read it) would only repeat that error in a more confusing way.
bool isPoisoned(const std::unordered_set<std::string>& poisoned, std::string path) {
  if (poisoned.contains("")) return true;  // the whole document was unreadable
  while (!path.empty()) {
    if (poisoned.contains(path)) return true;
    size_t cut = path.find_last_of(".[");
    if (cut == std::string::npos) break;
    path.resize(cut);
  }
  return false;
}

void sortByPosition(std::vector<Diagnostic>& d) {
  std::stable_sort(d.begin(), d.end(), [](const Diagnostic& a, const Diagnostic& b) {
    return std::tie(a.line, a.column) < std::tie(b.line, b.column);
  });
}

LoadResult fileError(std::string message) {
  LoadResult r;
  r.errors.push_back({0, 0, "", std::move(message)});
  return r;
}

std::string mib(uint64_t bytes) {
  return fmt::format("{:.1f} MiB", static_cast<double>(bytes) / (1 << 20));
}

}  // namespace

LoadResult loadString(std::string_view text) {
  LoadResult result;
  if (text.size() > kMaxConfigBytes)
    return fileError(fmt::format("the config is {}; the limit is 16 MiB", mib(text.size())));

  yaml::Document doc;
  if (auto error = doc.parse(text)) {
    result.errors.push_back(std::move(*error));
    return result;
  }
  if (doc.root() == nullptr || doc.root()->isNull()) return fileError("the config is empty");

  Snapshot s;
  detail::PositionIndex positions;
  std::unordered_set<std::string> poisoned;
  std::optional<std::string> declaredHash;
  try {
    Decoder(doc, text.size(), positions, result.errors, poisoned).snapshot(*doc.root(), s, declaredHash);
  } catch (const std::exception& e) {
    // Nothing in the decoder throws by design (bad_alloc aside); should something slip through, it
    // is a rejected config, not a crashed proxy.
    result.errors.push_back({0, 0, "", std::string("internal error while reading the config: ") + e.what()});
  }

  std::vector<Diagnostic> errors, warnings;
  detail::validateInto(s, &positions, errors, warnings);
  for (auto& d : errors)
    if (!isPoisoned(poisoned, d.path)) result.errors.push_back(std::move(d));
  for (auto& d : warnings)
    if (!isPoisoned(poisoned, d.path)) result.warnings.push_back(std::move(d));
  sortByPosition(result.errors);
  sortByPosition(result.warnings);
  if (!result.errors.empty()) return result;

  result.snapshot = std::make_shared<Snapshot>(std::move(s));
  result.snapshot->hash = computeHash(*result.snapshot);
  if (declaredHash && !declaredHash->empty() && *declaredHash != result.snapshot->hash) {
    SourcePos at = positions.contains("hash") ? positions["hash"] : SourcePos{};
    result.warnings.push_back(
        {at.line, at.column, "hash",
         "does not match the content (computed " + result.snapshot->hash + "); the computed hash is used"});
  }
  return result;
}

LoadResult loadFile(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st)) {
    std::string why = ec ? ec.message() : std::string("No such file or directory");
    return fileError(fmt::format("cannot read \"{}\": {}", path, why));
  }
  if (fs::is_directory(st)) return fileError(fmt::format("\"{}\" is a directory, not a config file", path));
  if (!fs::is_regular_file(st)) return fileError(fmt::format("\"{}\" is not a regular file", path));
  uintmax_t bytes = fs::file_size(path, ec);
  if (!ec && bytes > kMaxConfigBytes)
    return fileError(fmt::format("\"{}\" is {}; the limit is 16 MiB", path, mib(bytes)));

  std::ifstream in(path, std::ios::binary);
  if (!in) return fileError(fmt::format("cannot open \"{}\": {}", path, std::strerror(errno)));
  // Read in chunks, at most one byte past the limit (the file may have grown since it was measured).
  // Sizing the buffer for the limit up front would touch 16 MiB of pages and show as peak RSS.
  std::string text;
  text.reserve(ec ? 0 : static_cast<size_t>(bytes));
  char chunk[64 * 1024];
  while (text.size() <= kMaxConfigBytes) {
    in.read(chunk, sizeof chunk);
    text.append(chunk, static_cast<size_t>(in.gcount()));
    if (!in) break;
  }
  if (in.bad()) return fileError(fmt::format("cannot read \"{}\": {}", path, std::strerror(errno)));
  if (text.size() > kMaxConfigBytes) return fileError(fmt::format("\"{}\" is larger than 16 MiB", path));
  return loadString(text);
}

}  // namespace marchproxy::config
