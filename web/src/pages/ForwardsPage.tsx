import { ResourcePage } from '../components/ResourcePage';
import { ClusterName, ServiceNames } from '../components/ClusterName';
import type { Forward } from '../api/types';
import type { FieldDef } from '../lib/form';
import { hostPort, intRange, name, optionalHostPort } from '../lib/validate';

// An L4 port forward on the cluster's egress proxies (docs/egress.md "Port forwards").
const fields: FieldDef[] = [
  { name: 'cluster_id', label: 'Cluster', kind: 'select', ref: 'clusters', required: true, createOnly: true },
  { name: 'name', label: 'Name', kind: 'text', required: true, check: name },
  { name: 'protocol', label: 'Protocol', kind: 'select', options: ['tcp', 'udp'], defaultValue: 'tcp' },
  { name: 'listen_address', label: 'Listen address (IP:port)', kind: 'text', required: true, check: hostPort },
  {
    name: 'destination',
    label: 'Destination (host:port)',
    kind: 'text',
    check: optionalHostPort,
    help: 'or leave empty and choose a destination service and port',
  },
  { name: 'destination_service_id', label: 'Destination service', kind: 'select', ref: 'services', nullable: true },
  { name: 'destination_port', label: 'Destination port', kind: 'number', check: intRange(1, 65535) },
  {
    name: 'sources',
    label: 'Sources (JSON)',
    kind: 'json',
    help: '[{"cidr": "10.1.0.0/16", "service_id": 1}]: a caller from that network is that service',
  },
  { name: 'mtls', label: 'Callers by client certificate (tcp; needs the cluster’s egress TLS certificate)', kind: 'bool' },
  { name: 'idle_timeout_seconds', label: 'Idle timeout (s, 0 = proxy default)', kind: 'number', check: intRange(0, 604800) },
  { name: 'enabled', label: 'Enabled', kind: 'bool', defaultValue: true },
  { name: 'comment', label: 'Comment', kind: 'text' },
];

export default function ForwardsPage() {
  return (
    <ResourcePage<Forward & Record<string, unknown>>
      resource="forwards"
      title="Port forwards"
      noun="forward"
      clusterFilter
      intro="A forward is a TCP or UDP port on the cluster's egress proxies relayed to one destination, for clients that speak no proxy protocol. The caller is named by its source network or its client certificate, and a mapping must still allow the destination."
      fields={fields}
      columns={[
        { label: 'Name', render: (f) => f.name },
        { label: 'Cluster', render: (f) => <ClusterName id={f.cluster_id} /> },
        { label: 'Listen', render: (f) => `${f.protocol ?? 'tcp'} ${f.listen_address}` },
        {
          label: 'Destination',
          render: (f) =>
            f.destination_service_id ? (
              <>
                <ServiceNames ids={[f.destination_service_id]} />:{f.destination_port}
              </>
            ) : (
              f.destination
            ),
        },
        {
          label: 'Callers',
          render: (f) => (
            <>
              {(f.sources ?? []).map((s, i) => (
                <span key={i}>
                  {i > 0 ? ', ' : ''}
                  {s.cidr} → <ServiceNames ids={[s.service_id]} />
                </span>
              ))}
              {f.mtls ? ' + client certificates' : ''}
            </>
          ),
        },
        { label: 'Enabled', render: (f) => (f.enabled === false ? 'no' : 'yes') },
      ]}
    />
  );
}
