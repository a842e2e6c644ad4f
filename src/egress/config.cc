#include "egress/config.h"

#include <fmt/format.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include <algorithm>
#include <charconv>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

#include "common/base/duration.h"
#include "config/syntax.h"
#include "config/yaml_document.h"

namespace marchproxy::egress {

namespace {

using config::Diagnostic;
using config::yaml::Document;
using config::yaml::Value;

constexpr size_t kMaxConfigBytes = 16 << 20;

std::string hexOf(const unsigned char* p, size_t n) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < n; ++i) {
    out += kHex[p[i] >> 4];
    out += kHex[p[i] & 15];
  }
  return out;
}

std::string describe(const Value& v) {
  switch (v.kind) {
    case Value::Kind::kNull:
      return "null";
    case Value::Kind::kList:
      return "a list";
    case Value::Kind::kMap:
      return "a map";
    case Value::Kind::kScalar:
      return "a scalar";
  }
  return "nothing";
}

// Text -> Config, one field at a time; each error carries the value's line and field path.
class Decoder {
 public:
  Decoder(const Document& doc, std::string base_dir, std::vector<Diagnostic>& errors)
      : doc_(doc), base_dir_(std::move(base_dir)), errors_(errors) {}

  void root(const Value& v, Config& c) {
    bool have_forbidden = false;
    map(v, "",
        {
            {"schema", [&](const Value& n, const std::string& p) { integer(n, p, c.schema, 1, 1); }},
            {"kind", [&](const Value& n, const std::string& p) {
               std::string k;
               str(n, p, k);
               if (!k.empty() && k != "egress") error(n, p, "must be \"egress\" in an egress config");
             }},
            {"workers", [&](const Value& n, const std::string& p) { integer(n, p, c.workers, 0, 256); }},
            {"cpu_affinity", [&](const Value& n, const std::string& p) { cpuAffinity(n, p, c.cpu_affinity); }},
            {"listeners", [&](const Value& n, const std::string& p) { listeners(n, p, c.listeners); }},
            {"forwards", [&](const Value& n, const std::string& p) { forwards(n, p, c.forwards); }},
            {"admin", [&](const Value& n, const std::string& p) { admin(n, p, c.admin); }},
            {"access_log", [&](const Value& n, const std::string& p) {
               map(n, p,
                   {{"enabled", [&](const Value& m, const std::string& q) { boolean(m, q, c.access_log); }},
                    {"path", [&](const Value& m, const std::string& q) { str(m, q, c.access_log_path); }}});
             }},
            {"services", [&](const Value& n, const std::string& p) { services(n, p, c.services); }},
            {"jwt", [&](const Value& n, const std::string& p) { jwt(n, p, c.jwt); }},
            {"mappings", [&](const Value& n, const std::string& p) { mappings(n, p, c.rules); }},
            {"forbidden_networks", [&](const Value& n, const std::string& p) {
               have_forbidden = true;
               list(n, p, [&](const Value& item, const std::string& q) {
                 std::string s, err;
                 str(item, q, s);
                 if (s.empty()) return;
                 auto cidr = parseCidr(s, &err);
                 if (!cidr) error(item, q, fmt::format("{} {}", config::syntax::quote(s), err));
                 else c.forbidden_networks.push_back(*cidr);
               });
             }},
            {"dns", [&](const Value& n, const std::string& p) { dns(n, p, c.dns); }},
            {"timeouts", [&](const Value& n, const std::string& p) {
               map(n, p,
                   {{"connect", [&](const Value& m, const std::string& q) { duration(m, q, c.timeouts.connect); }},
                    {"header_read",
                     [&](const Value& m, const std::string& q) { duration(m, q, c.timeouts.header_read); }},
                    {"idle", [&](const Value& m, const std::string& q) { duration(m, q, c.timeouts.idle); }},
                    {"revoke_grace",
                     [&](const Value& m, const std::string& q) { duration(m, q, c.timeouts.revoke_grace); }},
                    {"drain", [&](const Value& m, const std::string& q) { duration(m, q, c.timeouts.drain); }}});
             }},
        },
        {"kind"});
    if (v.isMap() && !hasKey(v, "listeners") && !hasKey(v, "forwards"))
      error(v, "", "missing required field \"listeners\" (or \"forwards\")");
    if (!have_forbidden) c.forbidden_networks = defaultForbiddenNetworks();
  }

  // Cross-field rules, after the whole document is read.
  void validate(const Value& v, Config& c) {
    std::map<std::string, int> names;
    for (const auto& l : c.listeners)
      if (names[l.name]++ == 1) error(v, "listeners", fmt::format("listener name \"{}\" is used twice", l.name));
    std::map<std::string, int> svc;
    for (const auto& s : c.services)
      if (svc[s.name]++ == 1) error(v, "services", fmt::format("service name \"{}\" is used twice", s.name));
    std::map<std::string, int> kids;
    for (const auto& k : c.jwt.keys)
      if (kids[k.kid]++ == 1) error(v, "jwt.keys", fmt::format("key id \"{}\" is used twice", k.kid));
    for (size_t i = 0; i < c.rules.size(); ++i)
      for (const auto& s : c.rules[i].sources)
        if (s != "*" && !svc.count(s))
          error(v, fmt::format("mappings[{}].sources", i), fmt::format("unknown service \"{}\"", s));
    // Forwards: names share the listeners' namespace (they are logged as listeners), a listen
    // address is bound once per protocol, sources name known services.
    std::map<std::string, std::string> bound;  // "tcp|addr|port" -> who
    for (const auto& l : c.listeners)
      if (l.port != 0) bound[fmt::format("tcp|{}|{}", l.address, l.port)] = fmt::format("listener \"{}\"", l.name);
    for (size_t i = 0; i < c.forwards.size(); ++i) {
      const auto& f = c.forwards[i];
      const std::string p = fmt::format("forwards[{}]", i);
      if (names[f.name]++ == 1)
        error(v, p + ".name", fmt::format("name \"{}\" is already used by a listener or a forward", f.name));
      if (f.port != 0) {
        auto key = fmt::format("{}|{}|{}", protocolName(f.protocol), f.address, f.port);
        if (auto it = bound.find(key); it != bound.end())
          error(v, p + ".listen",
                fmt::format("{} ({}) is already the listen address of {}", config::syntax::formatHostPort(f.address, f.port),
                            protocolName(f.protocol), it->second));
        else bound[key] = fmt::format("forward \"{}\"", f.name);
      }
      for (size_t j = 0; j < f.sources.size(); ++j)
        if (!f.sources[j].service.empty() && !svc.count(f.sources[j].service))
          error(v, fmt::format("{}.sources[{}].service", p, j),
                fmt::format("unknown service \"{}\"", f.sources[j].service));
    }
    for (const auto& ref : jwt_service_refs_)
      if (!ref.name.empty() && !svc.count(ref.name))
        error(*ref.node, ref.path, fmt::format("unknown service \"{}\"", ref.name));
    // Collections are expanded here, once: the policy only ever sees service names. A collection
    // no service is in is a mistake in a file (a typo, or a service renamed), so it is an error
    // rather than a mapping that silently allows nobody.
    for (const auto& ref : collection_refs_) {
      Rule& r = c.rules[ref.rule];
      size_t members = 0;
      for (const auto& s : c.services) {
        if (s.collection != ref.name) continue;
        ++members;
        if (std::find(r.sources.begin(), r.sources.end(), s.name) == r.sources.end()) r.sources.push_back(s.name);
      }
      if (members == 0) error(*ref.node, ref.path, fmt::format("no service is in collection \"{}\"", ref.name));
    }
  }

 private:
  using Reader = std::function<void(const Value&, const std::string&)>;
  struct Field {
    std::string_view key;
    Reader read;
  };

  struct CollectionRef {
    size_t rule;  // index into Config::rules
    std::string name;
    const Value* node;
    std::string path;
  };
  std::vector<CollectionRef> collection_refs_;  // mappings[].source_collections, resolved by validate()
  struct ServiceRef {
    std::string name;
    const Value* node;
    std::string path;
  };
  std::vector<ServiceRef> jwt_service_refs_;  // jwt.keys[].service, checked by validate()

  void error(const Value& n, const std::string& path, std::string message) {
    errors_.push_back({n.pos.line, n.pos.column, path, std::move(message)});
  }

  static std::string child(const std::string& path, std::string_view key) {
    return path.empty() ? std::string(key) : path + "." + std::string(key);
  }

  void map(const Value& n, const std::string& path, const std::vector<Field>& fields,
           const std::vector<std::string_view>& required = {}) {
    if (!n.isMap()) {
      error(n, path, "expected a map, got " + describe(n));
      return;
    }
    std::vector<std::string_view> seen;
    for (size_t i = 0; i + 1 < n.items.size(); i += 2) {
      const Value& k = doc_.at(n.items[i]);
      const Value& val = doc_.at(n.items[i + 1]);
      const Field* f = nullptr;
      for (const auto& cand : fields)
        if (cand.key == k.text) f = &cand;
      if (!f) {
        std::vector<std::string_view> keys;
        for (const auto& cand : fields) keys.push_back(cand.key);
        auto near = config::syntax::closest(k.text, keys);
        error(k, child(path, k.text),
              near ? fmt::format("unknown field (did you mean \"{}\"?)", *near) : std::string("unknown field"));
        continue;
      }
      seen.push_back(f->key);
      f->read(val, child(path, f->key));
    }
    for (auto r : required)
      if (std::find(seen.begin(), seen.end(), r) == seen.end())
        error(n, path, fmt::format("missing required field \"{}\"", r));
  }

  void list(const Value& n, const std::string& path, const Reader& item) {
    if (!n.isList()) {
      error(n, path, "expected a list, got " + describe(n));
      return;
    }
    for (size_t i = 0; i < n.items.size(); ++i) item(doc_.at(n.items[i]), fmt::format("{}[{}]", path, i));
  }

  void str(const Value& n, const std::string& path, std::string& out) {
    if (!n.isScalar()) {
      error(n, path, "expected a string, got " + describe(n));
      return;
    }
    out = n.text;
  }

  // As the ingress's (docs/config-reference.md, "cpu_affinity"): off, auto, or a list of CPUs.
  void cpuAffinity(const Value& n, const std::string& path, config::CpuAffinity& out) {
    out.cpus.clear();
    if (n.isList()) {
      out.mode = config::CpuAffinity::Mode::kList;
      if (n.items.empty()) error(n, path, "an empty CPU list (write \"off\" to leave the workers unpinned)");
      list(n, path, [&](const Value& item, const std::string& q) {
        integer(item, q, out.cpus.emplace_back(), 0, config::syntax::kMaxCpu);
      });
      return;
    }
    std::string word, message;
    str(n, path, word);
    if (auto mode = config::syntax::cpuAffinityWord(word, n.quoted, &message))
      out.mode = *mode;
    else
      error(n, path, message);
  }

  template <typename T>
  void integer(const Value& n, const std::string& path, T& out, int64_t lo, int64_t hi) {
    int64_t v = 0;
    if (!n.isScalar() || n.quoted) {
      error(n, path, "expected a number, got " + describe(n));
      return;
    }
    auto [p, ec] = std::from_chars(n.text.data(), n.text.data() + n.text.size(), v);
    if (ec != std::errc() || p != n.text.data() + n.text.size()) {
      error(n, path, fmt::format("expected a whole number, got {}", config::syntax::quote(n.text)));
      return;
    }
    if (v < lo || v > hi) {
      error(n, path, fmt::format("must be between {} and {}", lo, hi));
      return;
    }
    out = static_cast<T>(v);
  }

  void boolean(const Value& n, const std::string& path, bool& out) {
    if (n.isScalar() && !n.quoted && (n.text == "true" || n.text == "false")) {
      out = n.text == "true";
      return;
    }
    error(n, path, "expected true or false");
  }

  void duration(const Value& n, const std::string& path, Millis& out) {
    std::string s;
    str(n, path, s);
    auto d = parseDuration(s);
    if (!d) {
      error(n, path, fmt::format("{} is not a duration (\"250ms\", \"5s\", \"2m\")", config::syntax::quote(s)));
      return;
    }
    out = *d;
  }

  void name(const Value& n, const std::string& path, std::string& out) {
    str(n, path, out);
    if (n.isScalar() && !config::syntax::isName(out)) error(n, path, std::string(config::syntax::kNameRule));
  }

  std::string readFile(const Value& n, const std::string& path, const std::string& file) {
    std::filesystem::path p(file);
    if (p.is_relative()) p = std::filesystem::path(base_dir_) / p;
    std::ifstream in(p, std::ios::binary);
    if (!in) {
      error(n, path, fmt::format("cannot read {}", p.string()));
      return {};
    }
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

  void listeners(const Value& n, const std::string& path, std::vector<ListenerConfig>& out) {
    list(n, path, [&](const Value& item, const std::string& p) {
      ListenerConfig l;
      map(item, p,
          {{"name", [&](const Value& m, const std::string& q) { name(m, q, l.name); }},
           {"address", [&](const Value& m, const std::string& q) {
              str(m, q, l.address);
              if (!parseIp(l.address)) error(m, q, "must be an IPv4 or IPv6 address");
            }},
           {"port", [&](const Value& m, const std::string& q) { integer(m, q, l.port, 0, 65535); }},
           {"protocol", [&](const Value& m, const std::string& q) {
              std::string s;
              str(m, q, s);
              if (s == "http") l.kind = ListenerConfig::Kind::kHttp;
              else if (s == "socks5") l.kind = ListenerConfig::Kind::kSocks5;
              else error(m, q, "must be \"http\" or \"socks5\"");
            }},
           {"tls", [&](const Value& m, const std::string& q) { l.tls = tlsBlock(m, q, false); }}},
          {"name", "port"});
      out.push_back(std::move(l));
    });
    if (n.isList() && n.items.empty()) error(n, path, "at least one listener is needed");
  }

  void forwards(const Value& n, const std::string& path, std::vector<ForwardConfig>& out) {
    list(n, path, [&](const Value& item, const std::string& p) {
      ForwardConfig f;
      const Value* tls_node = nullptr;
      map(item, p,
          {{"name", [&](const Value& m, const std::string& q) { name(m, q, f.name); }},
           {"listen", [&](const Value& m, const std::string& q) {
              std::string text, err;
              str(m, q, text);
              if (!m.isScalar()) return;
              auto hp = config::syntax::parseHostPort(text, &err);
              if (!hp || !parseIp(hp->host) || hp->port > 65535) {
                error(m, q,
                      fmt::format("{} must be an IP address and a port (\"127.0.0.1:15432\", \"[::1]:5353\"; "
                                  "port 0 = chosen by the kernel)",
                                  config::syntax::quote(text)));
                return;
              }
              f.address = formatIp(*parseIp(hp->host));
              f.port = static_cast<uint16_t>(hp->port);
            }},
           {"protocol", [&](const Value& m, const std::string& q) {
              std::string s;
              str(m, q, s);
              if (s == "tcp") f.protocol = Protocol::kTcp;
              else if (s == "udp") f.protocol = Protocol::kUdp;
              else error(m, q, fmt::format("must be \"tcp\" or \"udp\", got {}", config::syntax::quote(s)));
            }},
           {"destination", [&](const Value& m, const std::string& q) {
              std::string text, err;
              str(m, q, text);
              if (!m.isScalar()) return;
              auto hp = config::syntax::parseHostPort(text, &err);
              std::optional<Destination> d;
              if (hp) d = parseDestination(hp->host, &err);
              const bool one_host = d && (d->kind == Destination::Kind::kName ||
                                          (d->kind == Destination::Kind::kCidr &&
                                           d->cidr.prefix == (d->cidr.base.v6 ? 128 : 32)));
              if (!hp || !one_host || hp->port < 1 || hp->port > 65535) {
                error(m, q,
                      fmt::format("{} must be one host (a name or an IP address) and a port 1-65535 "
                                  "(\"db.example.com:5432\", \"[2001:db8::1]:53\")",
                                  config::syntax::quote(text)));
                return;
              }
              f.host = d->kind == Destination::Kind::kName ? d->name : formatIp(d->cidr.base);
              f.dest_port = static_cast<uint16_t>(hp->port);
            }},
           {"sources", [&](const Value& m, const std::string& q) {
              list(m, q, [&](const Value& s, const std::string& sq) {
                ForwardSource src;
                bool have_cidr = false;
                map(s, sq,
                    {{"cidr", [&](const Value& v, const std::string& vq) {
                        std::string text, err;
                        str(v, vq, text);
                        if (!v.isScalar()) return;
                        auto c = parseCidr(text, &err);
                        if (!c) error(v, vq, fmt::format("{} {}", config::syntax::quote(text), err));
                        else {
                          src.cidr = *c;
                          have_cidr = true;
                        }
                      }},
                     {"service", [&](const Value& v, const std::string& vq) { name(v, vq, src.service); }}},
                    {"cidr", "service"});
                if (have_cidr) f.sources.push_back(std::move(src));
              });
            }},
           {"tls", [&](const Value& m, const std::string& q) {
              tls_node = &m;
              f.tls = tlsBlock(m, q, true);
            }},
           {"idle_timeout", [&](const Value& m, const std::string& q) { duration(m, q, f.idle_timeout); }},
           {"max_sessions", [&](const Value& m, const std::string& q) { integer(m, q, f.max_sessions, 1, 1000000); }}},
          {"name", "listen", "destination"});
      if (item.isMap()) {
        if (tls_node && f.protocol == Protocol::kUdp)
          error(*tls_node, p + ".tls", "TLS client certificates are for tcp forwards only (this forward is udp)");
        if (!f.tls && f.sources.empty())
          error(item, p + ".sources",
                "a forward needs \"sources\" (CIDR -> service) or \"tls\" (client certificate CN = service)");
      }
      out.push_back(std::move(f));
    });
  }

  // A TLS block (a listener's or a forward's): the files must exist, and the certificate, key, CA
  // and CRL must load (the contexts are built here, once per config). A forward identifies its
  // callers by certificate only, so it requires client_ca and client certificates; a listener may
  // go without (clients then authenticate as on a plain listener) or make them optional.
  TlsConfig tlsBlock(const Value& m, const std::string& q, bool forward) {
    TlsConfig t;
    auto file = [&](std::string& dst) {
      return [&](const Value& v, const std::string& vq) {
        std::string name;
        str(v, vq, name);
        if (!v.isScalar()) return;
        std::filesystem::path p(name);
        if (p.is_relative()) p = std::filesystem::path(base_dir_) / p;
        dst = p.string();
        std::ifstream in(p);
        if (!in) error(v, vq, fmt::format("cannot read {}", dst));
      };
    };
    const size_t before = errors_.size();
    std::string client_auth;
    const Value* client_auth_node = nullptr;
    std::vector<Field> fields{{"cert", file(t.cert)}, {"key", file(t.key)}, {"client_ca", file(t.client_ca)},
                              {"crl", file(t.crl)}};
    if (!forward)
      fields.push_back({"client_auth", [&](const Value& v, const std::string& vq) {
                          str(v, vq, client_auth);
                          client_auth_node = &v;
                          if (client_auth != "optional" && client_auth != "require")
                            error(v, vq, "must be \"optional\" or \"require\"");
                        }});
    map(m, q, fields, forward ? std::vector<std::string_view>{"cert", "key", "client_ca"}
                              : std::vector<std::string_view>{"cert", "key"});
    if (client_auth_node && t.client_ca.empty())
      error(*client_auth_node, q + ".client_auth", "needs \"client_ca\" (the CA client certificates chain to)");
    if (!t.crl.empty() && t.client_ca.empty()) error(m, q + ".crl", "needs \"client_ca\"");
    if (errors_.size() != before) return t;
    t.require_client_cert = forward || client_auth == "require";
    config::ListenerTls lt;
    lt.certificates.push_back({t.cert, t.key, {}, {}});
    lt.session_tickets = false;
    if (!t.client_ca.empty()) {
      lt.client_auth.mode = t.require_client_cert ? config::ClientAuth::Mode::kRequire : config::ClientAuth::Mode::kOptional;
      lt.client_auth.ca = t.client_ca;
      lt.client_auth.crl = t.crl;
    }
    std::vector<proxy::tls::Problem> problems;
    t.contexts = proxy::tls::ServerContexts::build(lt, q, ".", &problems);
    for (auto& pr : problems) {
      if (pr.warning) continue;
      // The ingress's field names -> this block's.
      std::string field = pr.field;
      for (auto [from, to] : {std::pair<std::string_view, std::string_view>{".certificates[0]", ""},
                              {".client_auth.ca", ".client_ca"}, {".client_auth.crl", ".crl"}})
        if (auto at = field.find(from); at != std::string::npos) field.replace(at, from.size(), to);
      error(m, field, pr.message);
    }
    return t;
  }

  void admin(const Value& n, const std::string& path, AdminConfig& a) {
    map(n, path,
        {{"enabled", [&](const Value& m, const std::string& q) { boolean(m, q, a.enabled); }},
         {"address", [&](const Value& m, const std::string& q) {
            str(m, q, a.address);
            if (!parseIp(a.address)) error(m, q, "must be an IPv4 or IPv6 address");
          }},
         {"port", [&](const Value& m, const std::string& q) { integer(m, q, a.port, 0, 65535); }}});
  }

  void services(const Value& n, const std::string& path, std::vector<Service>& out) {
    list(n, path, [&](const Value& item, const std::string& p) {
      Service s;
      map(item, p,
          {{"name", [&](const Value& m, const std::string& q) { name(m, q, s.name); }},
           {"collection", [&](const Value& m, const std::string& q) { name(m, q, s.collection); }},
           {"tokens", [&](const Value& m, const std::string& q) {
              list(m, q, [&](const Value& t, const std::string& tq) {
                std::string text;
                str(t, tq, text);
                if (!t.isScalar()) return;
                std::array<uint8_t, 32> h{};
                if (!parseTokenHash(text, h))
                  error(t, tq,
                        "must be \"sha256:<64 hex digits>\" (the SHA-256 of the token; `marchproxy "
                        "egress-token` prints one)");
                else s.token_sha256.push_back(h);
              });
            }}},
          {"name"});
      out.push_back(std::move(s));
    });
  }

  static bool parseTokenHash(std::string_view text, std::array<uint8_t, 32>& out) {
    if (!text.starts_with("sha256:") || text.size() != 7 + 64) return false;
    for (size_t i = 0; i < 32; ++i) {
      auto nib = [](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        return -1;
      };
      int hi = nib(text[7 + 2 * i]), lo = nib(text[8 + 2 * i]);
      if (hi < 0 || lo < 0) return false;
      out[i] = static_cast<uint8_t>(hi << 4 | lo);
    }
    return true;
  }

  void jwt(const Value& n, const std::string& path, JwtConfig& j) {
    map(n, path,
        {{"issuer", [&](const Value& m, const std::string& q) { str(m, q, j.issuer); }},
         {"audience", [&](const Value& m, const std::string& q) { str(m, q, j.audience); }},
         {"clock_skew", [&](const Value& m, const std::string& q) { duration(m, q, j.clock_skew); }},
         {"keys", [&](const Value& m, const std::string& q) {
            list(m, q, [&](const Value& item, const std::string& p) {
              JwtKey k;
              std::string alg;
              const Value* alg_node = nullptr;
              map(item, p,
                  {{"id", [&](const Value& v, const std::string& vq) { str(v, vq, k.kid); }},
                   {"alg", [&](const Value& v, const std::string& vq) {
                      str(v, vq, alg);
                      alg_node = &v;
                    }},
                   {"secret", [&](const Value& v, const std::string& vq) { str(v, vq, k.secret); }},
                   {"service", [&](const Value& v, const std::string& vq) {
                      name(v, vq, k.service);
                      jwt_service_refs_.push_back({k.service, &v, vq});
                    }},
                   {"secret_file",
                    [&](const Value& v, const std::string& vq) {
                      std::string f;
                      str(v, vq, f);
                      k.secret = readFile(v, vq, f);
                      while (!k.secret.empty() && (k.secret.back() == '\n' || k.secret.back() == '\r'))
                        k.secret.pop_back();
                    }},
                   {"public_key", [&](const Value& v, const std::string& vq) { str(v, vq, k.public_key); }},
                   {"public_key_file",
                    [&](const Value& v, const std::string& vq) {
                      std::string f;
                      str(v, vq, f);
                      k.public_key = readFile(v, vq, f);
                    }}},
                  {"id", "alg"});
              if (alg_node) {
                if (alg == "HS256") k.alg = JwtAlg::kHs256;
                else if (alg == "RS256") k.alg = JwtAlg::kRs256;
                else if (alg == "ES384") k.alg = JwtAlg::kEs384;
                else error(*alg_node, p + ".alg", "must be HS256, RS256 or ES384");
                if (k.alg == JwtAlg::kHs256 && k.secret.size() < 32)
                  error(item, p, "an HS256 key needs \"secret\" or \"secret_file\" of at least 32 bytes");
                if (k.alg != JwtAlg::kHs256 && k.public_key.empty())
                  error(item, p, fmt::format("an {} key needs \"public_key\" or \"public_key_file\" (PEM)", alg));
                if (k.alg != JwtAlg::kHs256 && !k.secret.empty())
                  error(item, p, "\"secret\" is for HS256 keys only");
              }
              j.keys.push_back(std::move(k));
            });
          }}});
  }

  void mappings(const Value& n, const std::string& path, std::vector<Rule>& out) {
    list(n, path, [&](const Value& item, const std::string& p) {
      Rule r;
      map(item, p,
          {{"name", [&](const Value& m, const std::string& q) { name(m, q, r.name); }},
           {"sources", [&](const Value& m, const std::string& q) {
              list(m, q, [&](const Value& s, const std::string& sq) {
                std::string text;
                str(s, sq, text);
                if (s.isScalar()) r.sources.push_back(text);
              });
            }},
           {"source_collections", [&](const Value& m, const std::string& q) {
              list(m, q, [&](const Value& s, const std::string& sq) {
                std::string text;
                name(s, sq, text);
                if (!s.isScalar() || text.empty()) return;
                r.source_collections.push_back(text);
                collection_refs_.push_back({out.size(), text, &s, sq});
              });
            }},
           {"destinations", [&](const Value& m, const std::string& q) {
              list(m, q, [&](const Value& s, const std::string& sq) {
                std::string text, err;
                str(s, sq, text);
                if (!s.isScalar()) return;
                auto d = parseDestination(text, &err);
                if (!d) error(s, sq, fmt::format("{} {}", config::syntax::quote(text), err));
                else r.destinations.push_back(std::move(*d));
              });
            }},
           {"protocols", [&](const Value& m, const std::string& q) {
              list(m, q, [&](const Value& s, const std::string& sq) {
                std::string text;
                str(s, sq, text);
                if (!s.isScalar()) return;
                auto pr = parseProtocol(text);
                if (!pr) error(s, sq, "must be one of http, https, tcp, udp, icmp");
                else r.protocols |= static_cast<uint8_t>(*pr);
              });
            }},
           {"ports", [&](const Value& m, const std::string& q) {
              list(m, q, [&](const Value& s, const std::string& sq) {
                std::string text, err;
                str(s, sq, text);
                if (!s.isScalar()) return;
                auto pr = parsePortRange(text, &err);
                if (!pr) error(s, sq, fmt::format("{} {}", config::syntax::quote(text), err));
                else r.ports.push_back(*pr);
              });
            }},
           {"priority", [&](const Value& m, const std::string& q) { integer(m, q, r.priority, -1000000, 1000000); }},
           {"sni_check", [&](const Value& m, const std::string& q) { boolean(m, q, r.sni_check); }},
           {"revoke_grace", [&](const Value& m, const std::string& q) {
              Millis g{0};
              duration(m, q, g);
              r.revoke_grace = g;
            }}},
          {"name", "destinations", "protocols", "ports"});
      if (item.isMap()) {
        const bool has_sources = hasKey(item, "sources"), has_collections = hasKey(item, "source_collections");
        if (!has_sources && !has_collections)
          error(item, p, "missing required field \"sources\" (service names or \"*\") or \"source_collections\"");
        if (r.sources.empty() && has_sources && !has_collections) error(item, p + ".sources", "must not be empty");
        if (r.source_collections.empty() && has_collections && !has_sources)
          error(item, p + ".source_collections", "must not be empty");
        if (r.destinations.empty() && hasKey(item, "destinations")) error(item, p + ".destinations", "must not be empty");
        if (r.protocols == 0 && hasKey(item, "protocols")) error(item, p + ".protocols", "must not be empty");
        if (r.ports.empty() && hasKey(item, "ports")) error(item, p + ".ports", "must not be empty");
      }
      out.push_back(std::move(r));
    });
  }

  bool hasKey(const Value& m, std::string_view key) const {
    for (size_t i = 0; i + 1 < m.items.size(); i += 2)
      if (doc_.at(m.items[i]).text == key) return true;
    return false;
  }

  void dns(const Value& n, const std::string& path, DnsConfig& d) {
    map(n, path,
        {{"servers", [&](const Value& m, const std::string& q) {
            list(m, q, [&](const Value& s, const std::string& sq) {
              std::string text;
              str(s, sq, text);
              if (!s.isScalar()) return;
              std::string err;
              if (!parseIp(text)) {
                auto hp = config::syntax::parseHostPort(text, &err);
                if (!hp || !parseIp(hp->host) || hp->port < 1 || hp->port > 65535) {
                  error(s, sq, "must be an IP address, optionally with a port (\"127.0.0.1:5353\", \"[::1]:53\")");
                  return;
                }
              }
              d.servers.push_back(text);
            });
          }},
         {"hosts", [&](const Value& m, const std::string& q) {
            if (!m.isMap()) {
              error(m, q, "expected a map of name: [addresses], got " + describe(m));
              return;
            }
            for (size_t i = 0; i + 1 < m.items.size(); i += 2) {
              const Value& k = doc_.at(m.items[i]);
              const Value& v = doc_.at(m.items[i + 1]);
              std::string err;
              auto dest = parseDestination(k.text, &err);
              if (!dest || dest->kind != Destination::Kind::kName) {
                error(k, child(q, k.text), "must be a host name");
                continue;
              }
              auto& addrs = d.hosts[dest->name];
              list(v, child(q, k.text), [&](const Value& a, const std::string& aq) {
                std::string text;
                str(a, aq, text);
                auto ip = parseIp(text);
                if (!ip) error(a, aq, fmt::format("{} is not an IP address", config::syntax::quote(text)));
                else addrs.push_back(*ip);
              });
            }
          }},
         {"min_ttl", [&](const Value& m, const std::string& q) { duration(m, q, d.min_ttl); }},
         {"max_ttl", [&](const Value& m, const std::string& q) { duration(m, q, d.max_ttl); }},
         {"negative_ttl", [&](const Value& m, const std::string& q) { duration(m, q, d.negative_ttl); }},
         {"timeout", [&](const Value& m, const std::string& q) { duration(m, q, d.timeout); }}});
  }

  const Document& doc_;
  std::string base_dir_;
  std::vector<Diagnostic>& errors_;
};

}  // namespace

std::string_view jwtAlgName(JwtAlg a) {
  switch (a) {
    case JwtAlg::kHs256:
      return "HS256";
    case JwtAlg::kRs256:
      return "RS256";
    case JwtAlg::kEs384:
      return "ES384";
  }
  return "?";
}

LoadResult loadString(std::string_view text, const std::string& base_dir) {
  LoadResult r;
  Document doc;
  if (auto err = doc.parse(text)) {
    r.errors.push_back(*err);
    return r;
  }
  if (!doc.root()) {
    r.errors.push_back({0, 0, "", "the config is empty"});
    return r;
  }
  auto c = std::make_shared<Config>();
  Decoder d(doc, base_dir, r.errors);
  d.root(*doc.root(), *c);
  if (r.errors.empty()) d.validate(*doc.root(), *c);
  if (!r.errors.empty()) {
    std::stable_sort(r.errors.begin(), r.errors.end(),
                     [](const Diagnostic& a, const Diagnostic& b) { return a.line < b.line; });
    return r;
  }
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(), md);
  c->hash = hexOf(md, sizeof md);
  r.config = std::move(c);
  return r;
}

LoadResult loadFile(const std::string& path) {
  LoadResult r;
  std::error_code ec;
  auto size = std::filesystem::file_size(path, ec);
  if (ec) {
    r.errors.push_back({0, 0, "", fmt::format("cannot read {}: {}", path, ec.message())});
    return r;
  }
  if (size > kMaxConfigBytes) {
    r.errors.push_back({0, 0, "", fmt::format("{} is larger than 16 MiB", path)});
    return r;
  }
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  auto dir = std::filesystem::path(path).parent_path().string();
  return loadString(ss.str(), dir.empty() ? "." : dir);
}

bool isEgressDocument(std::string_view text) {
  Document doc;
  if (doc.parse(text) || !doc.root() || !doc.root()->isMap()) return false;
  const Value& root = *doc.root();
  for (size_t i = 0; i + 1 < root.items.size(); i += 2)
    if (doc.at(root.items[i]).text == "kind") return doc.at(root.items[i + 1]).text == "egress";
  return false;
}

std::string summary(const Config& c) {
  size_t http = 0, socks = 0;
  for (const auto& l : c.listeners) (l.kind == ListenerConfig::Kind::kHttp ? http : socks)++;
  return fmt::format("OK: egress config: {} listener(s) ({} http, {} socks5), {} forward(s), {} service(s), "
                     "{} JWT key(s), {} mapping(s); hash {}",
                     c.listeners.size(), http, socks, c.forwards.size(), c.services.size(), c.jwt.keys.size(),
                     c.rules.size(), c.hash.substr(0, 12));
}

}  // namespace marchproxy::egress
