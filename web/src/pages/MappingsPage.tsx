import { Chip, Stack } from '@mui/material';
import { ResourcePage } from '../components/ResourcePage';
import { ClusterName, ServiceNames } from '../components/ClusterName';
import type { Mapping } from '../api/types';
import type { FieldDef } from '../lib/form';
import { intRange, name, port } from '../lib/validate';

const fields: FieldDef[] = [
  { name: 'cluster_id', label: 'Cluster', kind: 'select', ref: 'clusters', required: true, createOnly: true },
  { name: 'name', label: 'Name', kind: 'text', required: true, check: name },
  { name: 'source_services', label: 'Source services', kind: 'ids', ref: 'services' },
  { name: 'source_collections', label: 'Source collections (comma-separated)', kind: 'list', itemCheck: name },
  { name: 'destination_services', label: 'Destination services', kind: 'ids', ref: 'services', required: true },
  { name: 'protocols', label: 'Protocols', kind: 'multi', options: ['http', 'https', 'tcp', 'udp', 'icmp'], required: true },
  { name: 'ports', label: 'Ports (e.g. 443, 8000-8100)', kind: 'list', itemCheck: port, numeric: true },
  { name: 'auth_required', label: 'Require service authentication', kind: 'bool' },
  { name: 'priority', label: 'Priority', kind: 'number', check: intRange(0, 10000), help: '0-10000' },
  { name: 'enabled', label: 'Enabled', kind: 'bool', defaultValue: true },
  { name: 'comment', label: 'Comment', kind: 'text' },
];

export default function MappingsPage() {
  return (
    <ResourcePage<Mapping & Record<string, unknown>>
      resource="mappings"
      title="Mappings"
      noun="mapping"
      clusterFilter
      intro="A mapping allows source services (or collections) to reach destination services on the listed protocols and ports. Everything else is denied."
      fields={fields}
      columns={[
        { label: 'Name', render: (m) => m.name },
        { label: 'Cluster', render: (m) => <ClusterName id={m.cluster_id} /> },
        {
          label: 'Source → destination',
          render: (m) => (
            <>
              <ServiceNames ids={m.source_services} />
              {m.source_collections?.length ? ` + [${m.source_collections.join(', ')}]` : ''} →{' '}
              <ServiceNames ids={m.destination_services} />
            </>
          ),
        },
        {
          label: 'Protocols / ports',
          render: (m) => (
            <Stack direction="row" spacing={0.5} sx={{ flexWrap: 'wrap' }}>
              {(m.protocols ?? []).map((p) => (
                <Chip key={p} size="small" label={p} />
              ))}
              <span>{(m.ports ?? []).join(', ') || 'any'}</span>
            </Stack>
          ),
        },
        { label: 'Enabled', render: (m) => (m.enabled === false ? 'no' : 'yes') },
      ]}
    />
  );
}
