import { ResourcePage } from '../components/ResourcePage';
import { ClusterName } from '../components/ClusterName';
import type { IngressRoute } from '../api/types';
import type { FieldDef } from '../lib/form';
import { hostPattern, name, urlPath } from '../lib/validate';

const fields: FieldDef[] = [
  { name: 'cluster_id', label: 'Cluster', kind: 'select', ref: 'clusters', required: true, createOnly: true },
  { name: 'name', label: 'Name', kind: 'text', required: true, check: name },
  { name: 'hosts', label: 'Hosts (comma-separated, *.example.com allowed)', kind: 'list', itemCheck: hostPattern, required: true },
  { name: 'paths', label: 'Paths', kind: 'list', itemCheck: urlPath, defaultValue: '/' },
  { name: 'backends', label: 'Backends: one "host:port weight" per line', kind: 'backends', required: true },
  { name: 'lb_policy', label: 'Load balancing', kind: 'select', options: ['round_robin', 'least_conn', 'random', 'ip_hash'], defaultValue: 'round_robin' },
  { name: 'health_check', label: 'Health check (JSON: path, interval_ms, timeout_ms, …)', kind: 'json' },
  { name: 'rate_limit', label: 'Rate limit (JSON: requests_per_second, burst)', kind: 'json' },
  { name: 'certificate_id', label: 'TLS certificate', kind: 'select', ref: 'certificates', nullable: true },
  { name: 'mtls_allow', label: 'mTLS allow-list (client identities, comma-separated)', kind: 'list' },
  { name: 'enabled', label: 'Enabled', kind: 'bool', defaultValue: true },
];

export default function RoutesPage() {
  return (
    <ResourcePage<IngressRoute & Record<string, unknown>>
      resource="routes"
      title="Ingress routes"
      noun="route"
      clusterFilter
      intro="Ingress routes send requests for the given hosts and paths to weighted backends, optionally terminating TLS and requiring client certificates."
      fields={fields}
      columns={[
        { label: 'Name', render: (r) => r.name },
        { label: 'Cluster', render: (r) => <ClusterName id={r.cluster_id} /> },
        { label: 'Hosts / paths', render: (r) => `${(r.hosts ?? []).join(', ')} ${(r.paths ?? ['/']).join(' ')}` },
        {
          label: 'Backends',
          render: (r) => (r.backends ?? []).map((b) => `${b.address}×${b.weight ?? 1}`).join(', '),
        },
        { label: 'LB', render: (r) => r.lb_policy ?? 'round_robin' },
        { label: 'TLS', render: (r) => (r.certificate_id ? `cert #${r.certificate_id}` : '–') },
      ]}
    />
  );
}
