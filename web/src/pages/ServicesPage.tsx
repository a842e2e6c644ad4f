import { ResourcePage, rotate } from '../components/ResourcePage';
import { ClusterName } from '../components/ClusterName';
import type { Service } from '../api/types';
import type { FieldDef } from '../lib/form';
import { hostOrIp, intRange, name } from '../lib/validate';

const fields: FieldDef[] = [
  { name: 'cluster_id', label: 'Cluster', kind: 'select', ref: 'clusters', required: true, createOnly: true },
  { name: 'name', label: 'Name', kind: 'text', required: true, check: name },
  { name: 'ip_fqdn', label: 'Address (IP, CIDR or host name)', kind: 'text', required: true, check: hostOrIp },
  { name: 'description', label: 'Description', kind: 'text' },
  { name: 'collection', label: 'Collection', kind: 'text', check: (s) => (s === '' ? undefined : name(s)), help: 'groups services for mappings' },
  { name: 'auth_type', label: 'Authentication', kind: 'select', options: ['none', 'base64', 'jwt'], defaultValue: 'none' },
  { name: 'jwt_expiry', label: 'JWT expiry (s)', kind: 'number', check: intRange(60, 86400), help: '60-86400' },
];

export default function ServicesPage() {
  return (
    <ResourcePage<Service & Record<string, unknown>>
      resource="services"
      title="Services"
      noun="service"
      clusterFilter
      intro="A service is an identity proxies recognise. With base64 or JWT authentication it gets a secret, shown once on creation or rotation."
      fields={fields}
      secretOnCreate={{ key: 'secret', title: 'Service secret' }}
      actions={[{ label: 'Rotate secret', run: rotate.serviceSecret, confirm: 'Issue a new secret? The old one stops working.' }]}
      columns={[
        { label: 'Name', render: (s) => s.name },
        { label: 'Cluster', render: (s) => <ClusterName id={s.cluster_id} /> },
        { label: 'Address', render: (s) => s.ip_fqdn },
        { label: 'Collection', render: (s) => s.collection || '–' },
        { label: 'Auth', render: (s) => `${s.auth_type ?? 'none'}${s.has_secret ? ' (secret set)' : ''}` },
      ]}
    />
  );
}
