#include "manager/api/policy.h"

#include "manager/audit/audit.h"

namespace marchproxy::manager::api::policy {

void deny(const std::string& why) { throw ApiError(403, "forbidden", why); }

void auditDenied(App& app, const Principal& who, const Request& req, const std::string& action,
                 const std::string& resource, const std::string& why) {
  try {
    app.db.write([&](store::Conn& c) {
      audit::append(c, {who.username, req.remote_ip, action, resource, why, "denied"});
    });
  } catch (const std::exception&) {
  }
}

void auditRefused(App& app, const Principal& who, const Request& req, const std::string& action,
                  const std::string& resource, const ApiError& e) {
  if (e.status == 403) return auditDenied(app, who, req, action, resource, e.detail);
  if (e.status < 400 || e.status >= 500 || e.status == 401) return;
  std::string summary = std::to_string(e.status) + " " + e.type + ": " +
                        (e.type == "malformed-json" ? std::string("the body is not valid JSON") : e.detail);
  constexpr std::size_t kMaxSummary = 1024;  // details quote field values; keep a row bounded
  if (summary.size() > kMaxSummary) {
    std::size_t cut = kMaxSummary - 3;
    while (cut > 0 && (static_cast<unsigned char>(summary[cut]) & 0xC0) == 0x80) --cut;  // not inside a UTF-8 character
    summary = summary.substr(0, cut) + "...";
  }
  try {
    app.db.write([&](store::Conn& c) {
      audit::append(c, {who.username, req.remote_ip, action, resource, summary, "refused"});
    });
  } catch (const std::exception&) {
  }
}

void requireFeature(App& app, const std::string& feature) {
  if (app.license && app.license->hasFeature(feature)) return;
  std::string why = "the feature \"" + feature + "\" needs an enterprise licence that includes it";
  if (app.license) {
    auto st = app.license->state();
    why += " (licence: " + st.edition + ", " + st.status + (st.problem.empty() ? "" : ": " + st.problem) + ")";
  }
  ApiError e(403, "feature-not-licensed", why + "; see docs/licensing.md", "feature");
  throw e;
}

void requireAdmin(const Principal& p) {
  if (!p.isAdmin()) deny("this action needs the admin role (you are " + p.role + ")");
}

void requireWriter(const Principal& p) {
  if (p.role == "viewer") deny("the viewer role is read-only");
}

bool ownsCluster(store::Conn& c, const Principal& p, std::int64_t cluster_id) {
  return !c.exec("SELECT 1 FROM user_clusters WHERE user_id = ? AND cluster_id = ?",
                 {std::to_string(p.user_id), std::to_string(cluster_id)})
              .empty();
}

bool seesCluster(store::Conn& c, const Principal& p, std::int64_t cluster_id) {
  return ownsCluster(c, p, cluster_id) ||
         !c.exec("SELECT 1 FROM user_services us JOIN services s ON s.id = us.service_id "
                 "WHERE us.user_id = ? AND s.cluster_id = ?",
                 {std::to_string(p.user_id), std::to_string(cluster_id)})
              .empty();
}

bool ownsService(store::Conn& c, const Principal& p, std::int64_t service_id) {
  auto uid = std::to_string(p.user_id), sid = std::to_string(service_id);
  return !c.exec("SELECT 1 FROM services s WHERE s.id = ? AND ("
                 "EXISTS (SELECT 1 FROM user_services us WHERE us.user_id = ? AND us.service_id = s.id) OR "
                 "EXISTS (SELECT 1 FROM user_clusters uc WHERE uc.user_id = ? AND uc.cluster_id = s.cluster_id))",
                 {sid, uid, uid})
              .empty();
}

std::string clusterScopeSql() {
  return "cluster_id IN (SELECT cluster_id FROM user_clusters WHERE user_id = ? UNION "
         "SELECT s2.cluster_id FROM user_services us2 JOIN services s2 ON s2.id = us2.service_id "
         "WHERE us2.user_id = ?)";
}

std::string serviceScopeSql() {
  return "(id IN (SELECT service_id FROM user_services WHERE user_id = ?) OR "
         "cluster_id IN (SELECT cluster_id FROM user_clusters WHERE user_id = ?))";
}

}  // namespace marchproxy::manager::api::policy
