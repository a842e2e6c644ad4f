#pragma once
// Live events for the web UI and automation: `POST /api/v1/events/ticket` (authenticated) returns a
// single-use ticket valid 30 s; `GET /api/v1/events?ticket=…` upgrades to a WebSocket that streams
// the event bus (events/bus.h) filtered to what the ticket's user may read. Browsers cannot set an
// Authorization header on a WebSocket, and a ticket keeps the bearer token out of URLs and logs.
#include <memory>

#include "manager/api/context.h"
#include "manager/http/websocket.h"

namespace marchproxy::manager::api {

void addEventRoutes(App& app, http::Router& r);
// The WebSocket side (registered with Server::onUpgrade for /api/v1/events). Throws 401 on a
// missing, unknown, used or expired ticket.
std::unique_ptr<http::WsSession> openEventStream(App& app, Request& req);

// Whether `who` may read this configuration object (resources.cc's read rules).
bool mayReadObject(App& app, const Principal& who, const std::string& resource, const Json& object);

}  // namespace marchproxy::manager::api
