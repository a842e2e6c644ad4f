import { ResourcePage, rotate } from '../components/ResourcePage';
import type { Cluster } from '../api/types';
import type { FieldDef } from '../lib/form';
import { cidr, hostPort, name, optionalHostPort } from '../lib/validate';

const fields: FieldDef[] = [
  { name: 'name', label: 'Name', kind: 'text', required: true, check: name },
  { name: 'description', label: 'Description', kind: 'text' },
  { name: 'syslog_endpoint', label: 'Syslog endpoint (host:port)', kind: 'text', check: optionalHostPort },
  { name: 'log_auth', label: 'Log authentication', kind: 'bool', defaultValue: true },
  { name: 'log_netflow', label: 'Log netflow', kind: 'bool' },
  { name: 'log_debug', label: 'Debug logging', kind: 'bool' },
  {
    name: 'egress_tls_certificate_id',
    label: 'Egress TLS certificate',
    kind: 'select',
    ref: 'certificates',
    nullable: true,
    help: 'Egress proxies also listen as an HTTPS proxy with this certificate; clients may present a CA-issued client certificate whose CN is a service (admins only)',
  },
  {
    name: 'egress_tls_address',
    label: 'Egress TLS listen address (IP:port)',
    kind: 'text',
    required: true,
    defaultValue: '127.0.0.1:3129',
    check: hostPort,
  },
  {
    name: 'egress_socks_tls_address',
    label: 'Egress SOCKS5-over-TLS listen address (IP:port, empty = none)',
    kind: 'text',
    check: optionalHostPort,
    help: 'SOCKS5 over TLS with the egress TLS certificate, while one is set',
  },
  {
    name: 'egress_admin_address',
    label: 'Egress admin address (IP:port)',
    kind: 'text',
    required: true,
    defaultValue: '127.0.0.1:9902',
    check: hostPort,
    help: 'Where the egress proxies serve /metrics and /ready (their --admin); no forward may take this port (admins only)',
  },
  {
    name: 'forward_source_networks',
    label: 'Forward source networks (comma-separated CIDRs)',
    kind: 'list',
    itemCheck: cidr,
    help: "The networks non-admins may name in a forward's sources; empty = none (admins only)",
  },
];

export default function ClustersPage() {
  return (
    <ResourcePage<Cluster & Record<string, unknown>>
      resource="clusters"
      title="Clusters"
      noun="cluster"
      intro="A cluster is a group of proxies sharing one configuration. Its API key registers proxies; it is shown once, when the cluster is created or the key rotated."
      fields={fields}
      secretOnCreate={{ key: 'api_key', title: 'Cluster API key' }}
      actions={[{ label: 'Rotate key', run: rotate.clusterKey, confirm: 'Issue a new API key? The old one keeps working for one hour.' }]}
      columns={[
        { label: 'Name', render: (c) => c.name },
        { label: 'Description', render: (c) => c.description || '–' },
        { label: 'Syslog', render: (c) => c.syslog_endpoint || '–' },
        { label: 'Egress TLS', render: (c) => (c.egress_tls_certificate_id ? `cert #${c.egress_tls_certificate_id} on ${c.egress_tls_address}` : '–') },
        { label: 'Config version', render: (c) => c.config_version },
      ]}
    />
  );
}
