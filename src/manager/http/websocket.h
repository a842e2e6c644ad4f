#pragma once
// WebSocket sessions on the manager's thread-per-connection HTTP server. The server upgrades a GET
// on a registered path; the application supplies a WsSession that the connection thread asks for
// the next message to send (blocking on the application's own queue). The protocol is one-way
// (server → client): frames the client sends are read and ignored; a Close frame, a failed write or
// server shutdown ends the session.
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "manager/http/message.h"

namespace marchproxy::manager::http {

struct WsSession {
  virtual ~WsSession() = default;
  // Waits up to `wait` for the next text message; nullopt when there is none yet.
  virtual std::optional<std::string> next(std::chrono::milliseconds wait) = 0;
  // True once the session has ended on its own (e.g. its credential was revoked): the connection
  // sends a Close (1008, policy violation) and ends.
  virtual bool finished() const { return false; }
};

// Authenticates the upgrade request and opens a session, or throws ApiError (answered as
// problem+json without upgrading).
using WsUpgrade = std::function<std::unique_ptr<WsSession>(Request&)>;

}  // namespace marchproxy::manager::http
