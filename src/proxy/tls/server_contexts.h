#pragma once
// ServerContexts: everything one TLS listener needs to accept a handshake, compiled from its
// config::ListenerTls when a config is applied (never on a worker's request path).
//
// One SSL_CTX per certificate. A connection starts on the default certificate's context; the SNI
// (servername) callback then moves it to the context of the best name: exact, then the longest
// wildcard ("*.example.com" covers one label), then the default. The object is immutable once built
// and shared by every worker through the Runtime; a connection holds a shared_ptr to it for its
// whole life, so a reload (new contexts) never touches connections already open.
//
// Session tickets are encrypted with keys this object owns and rotates: a new key every
// ticket_key_rotation; tickets under the previous key are still accepted (and renewed).
#include <openssl/ssl.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/base/result.h"
#include "config/model.h"

namespace marchproxy::proxy::tls {

// A file the contexts were built from, as it was then: a later stat() that differs means reload.
struct FileStamp {
  std::string path;
  int64_t mtime_ns = 0;
  uint64_t size = 0;
  uint64_t inode = 0;
  bool operator==(const FileStamp&) const = default;
};
FileStamp stampOf(const std::string& path);

// A problem with one field of the tls block, for `marchproxy check` and for apply errors.
struct Problem {
  std::string field;  // "listeners[0].tls.certificates[1].key"
  std::string message;
  bool warning = false;
  std::string toString() const { return field + ": " + message; }
};

class ServerContexts {
 public:
  // path: "listeners[<i>].tls" for messages; base_dir: relative file names are resolved against it.
  // Returns nullptr with at least one error in *problems when the files are unusable; warnings
  // (an expired certificate) are added without failing.
  static std::shared_ptr<const ServerContexts> build(const config::ListenerTls& cfg, const std::string& path,
                                                     const std::filesystem::path& base_dir,
                                                     std::vector<Problem>* problems);
  ~ServerContexts();
  ServerContexts(const ServerContexts&) = delete;
  ServerContexts& operator=(const ServerContexts&) = delete;

  // A new SSL object for an accepted connection (server mode, default certificate). Caller owns it.
  SSL* newSession() const;
  // The context whose certificate serves `server_name` (lower-case or not).
  SSL_CTX* select(std::string_view server_name) const;
  std::chrono::milliseconds handshakeTimeout() const { return handshake_timeout_; }
  bool clientAuth() const { return client_auth_ != config::ClientAuth::Mode::kNone; }
  // Files read to build this object; any change on disk means the contexts are stale.
  const std::vector<FileStamp>& files() const { return files_; }
  bool filesChanged() const;

 private:
  struct TicketKey {
    unsigned char name[16];
    unsigned char aes[32];
    unsigned char hmac[32];
    int64_t created_ns = 0;
  };
  ServerContexts() = default;
  static int servernameCallback(SSL* ssl, int* alert, void* arg);
  static int ticketCallback(SSL* ssl, unsigned char* key_name, unsigned char* iv, EVP_CIPHER_CTX* cctx,
                            EVP_MAC_CTX* hctx, int enc);
  static int alpnCallback(SSL* ssl, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
                          unsigned int inlen, void* arg);
  bool ticketKeys(TicketKey* current, TicketKey* previous) const;  // rotates when due

  std::vector<SSL_CTX*> ctxs_;  // by certificate index
  size_t default_ = 0;
  std::unordered_map<std::string, size_t> exact_;
  std::vector<std::pair<std::string, size_t>> wildcards_;  // ".example.com" suffixes, longest first
  std::chrono::milliseconds handshake_timeout_{10'000};
  config::ClientAuth::Mode client_auth_ = config::ClientAuth::Mode::kNone;
  std::vector<FileStamp> files_;
  std::string alpn_wire_;  // the protocols offered, in the listener's order of preference (wire format)
  bool tickets_ = true;
  int64_t rotation_ns_ = 0;
  mutable std::mutex ticket_mu_;
  mutable TicketKey current_{}, previous_{};
  mutable bool have_previous_ = false;
};

// The index of the ServerContexts* stored on every SSL_CTX (for the callbacks).
int contextsIndex();

// Checks every TLS listener's files of a snapshot (for `marchproxy check`): the same checks build()
// does. Returns the problems found (empty = fine).
std::vector<Problem> checkSnapshot(const config::Snapshot& s, const std::filesystem::path& base_dir);

}  // namespace marchproxy::proxy::tls
