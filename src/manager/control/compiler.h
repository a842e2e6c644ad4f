#pragma once
// The snapshot compiler: one cluster's database state → the config document its ingress or egress
// proxies run (the config model of `marchproxy check`, as JSON) plus the files it names (PEM
// certificates, keys, CA bundle, CRL). Only enabled objects are compiled. Each result carries the
// cluster's config_version and `sha256:` of the canonical JSON of {config, files}, and is cached per
// (cluster, kind) until the version moves. See docs/control-plane.md for the mapping table.
//
// Threading: get() is safe from any request thread; compiles of one key may race (both results are
// identical, the last one is kept).
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include <nlohmann/json.hpp>

#include "manager/auth/keyring.h"
#include "manager/store/db.h"

namespace marchproxy::manager::control {

struct CompiledSnapshot {
  std::int64_t cluster_id = 0;
  std::string kind;  // ingress | egress
  std::int64_t version = 0;
  std::string hash;  // "sha256:<hex>"
  nlohmann::json config;
  std::map<std::string, std::string> files;
  std::string body;  // the 200 response of GET …/config, rendered once
};

// Where the CA material comes from (the Authority in the manager, fixed text in tests).
struct CaSource {
  std::function<std::string()> chain_pem;  // CA bundle client certificates must chain to
  std::function<std::string()> crl_pem;    // current CRL, always shipped as ca/crl.pem
};

class Compiler {
 public:
  Compiler(store::Db& db, const auth::KeyRing& keys, CaSource ca);
  // The snapshot at the cluster's current version (compiled or cached). nullptr: no such cluster.
  // Throws std::invalid_argument for a kind other than ingress/egress.
  std::shared_ptr<const CompiledSnapshot> get(std::int64_t cluster_id, const std::string& kind);
  // Compiles inside the caller's read transaction, without the cache.
  std::shared_ptr<const CompiledSnapshot> compile(store::Conn& c, std::int64_t cluster_id, const std::string& kind,
                                                  const std::string& ca_chain, const std::string& crl);

  std::uint64_t compiles() const { return compiles_.load(); }
  double compileSeconds() const;

 private:
  store::Db& db_;
  const auth::KeyRing& keys_;
  CaSource ca_;
  std::mutex mu_;          // cache_
  std::mutex compile_mu_;  // one compile at a time
  std::map<std::pair<std::int64_t, std::string>, std::shared_ptr<const CompiledSnapshot>> cache_;
  std::atomic<std::uint64_t> compiles_{0};
  std::atomic<std::uint64_t> compile_ns_{0};
};

// The cluster's config_version, or -1 when the cluster does not exist.
std::int64_t clusterVersion(store::Conn& c, std::int64_t cluster_id);

}  // namespace marchproxy::manager::control
