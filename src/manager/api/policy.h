#pragma once
// Authorisation rules, enforced in the service layer for every endpoint:
//   admin          everything;
//   service-owner  reads and edits the clusters and services assigned to them (a cluster assignment
//                  covers its services), creates services in assigned clusters, and writes mappings
//                  whose source services are all theirs (or in an assigned cluster);
//   viewer         reads configuration; no writes, no users, no audit log.
// Self-service (own password, 2FA, API tokens, logout) is open to every role.
#include <cstdint>
#include <string>

#include "manager/api/context.h"

namespace marchproxy::manager::api::policy {

[[noreturn]] void deny(const std::string& why);
// Appends a "denied" audit row for a refused request (best effort: a failing write is ignored).
void auditDenied(App& app, const Principal& who, const Request& req, const std::string& action,
                 const std::string& resource, const std::string& why);
// Appends the audit row for a write an authenticated actor attempted and the API refused (best
// effort, as auditDenied): 403 is outcome "denied" with the reason as summary; every other refusal
// (400, 404, 409, 412, 415, 422) is outcome "refused" with summary "<status> <type>: <detail>"
// (a malformed body's parser message is left out: it quotes the body). Only callers that passed
// authenticate() get here, so an unauthenticated flood writes nothing (docs/manager.md "Audit log").
void auditRefused(App& app, const Principal& who, const Request& req, const std::string& action,
                  const std::string& resource, const ApiError& e);
// Enterprise-only features: throws 403 (type feature-not-licensed) naming the missing feature and
// the licence state, unless the installed licence lists `feature` (see docs/licensing.md).
void requireFeature(App& app, const std::string& feature);
void requireAdmin(const Principal& p);
void requireWriter(const Principal& p);  // admin or service-owner
bool ownsCluster(store::Conn& c, const Principal& p, std::int64_t cluster_id);   // assigned directly
bool seesCluster(store::Conn& c, const Principal& p, std::int64_t cluster_id);   // or owns a service in it
bool ownsService(store::Conn& c, const Principal& p, std::int64_t service_id);
// SQL conditions (with `?` bound to the user id, count returned) restricting lists for an owner.
std::string clusterScopeSql();   // on column `cluster_id`, uses 2 parameters
std::string serviceScopeSql();   // on columns `id`,`cluster_id`, uses 2 parameters

}  // namespace marchproxy::manager::api::policy
