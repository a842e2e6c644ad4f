import { useState } from 'react';
import { Alert, Box, Button, Chip, Paper, Stack, Typography } from '@mui/material';
import { useQuery, useQueryClient } from '@tanstack/react-query';
import { BarChart, Bar, XAxis, YAxis, Tooltip, ResponsiveContainer, Cell } from 'recharts';
import { get, post } from '../api/client';
import type { Certificate } from '../api/types';
import { ResourcePage, useList } from '../components/ResourcePage';
import { ResourceForm } from '../components/ResourceForm';
import { SecretDialog } from '../components/SecretDialog';
import { Unavailable } from '../components/Unavailable';
import type { FieldDef } from '../lib/form';
import { intRange, name } from '../lib/validate';
import { daysUntil } from '../lib/time';
import { canWrite, useAuth } from '../store/auth';
import { brand } from '../theme';

const importFields: FieldDef[] = [
  { name: 'name', label: 'Name', kind: 'text', required: true, check: name },
  { name: 'description', label: 'Description', kind: 'text' },
  { name: 'cert_pem', label: 'Certificate chain (PEM)', kind: 'textarea', required: true },
  { name: 'key_pem', label: 'Private key (PEM, stored sealed)', kind: 'textarea', required: true, writeOnly: true },
];

const issueFields: FieldDef[] = [
  { name: 'kind', label: 'Kind', kind: 'select', options: ['server', 'client'], required: true, defaultValue: 'server' },
  { name: 'name', label: 'Name', kind: 'text', required: true, check: name },
  { name: 'sans', label: 'Server: DNS names / IPs (comma-separated)', kind: 'list' },
  { name: 'common_name', label: 'Client: common name', kind: 'text' },
  { name: 'days', label: 'Validity (days)', kind: 'number', check: intRange(1, 825), defaultValue: '365' },
];

export function ExpiryChip({ notAfter }: { notAfter?: string | null }) {
  const d = daysUntil(notAfter);
  if (d === undefined) return <>–</>;
  const color = d < 0 ? 'error' : d < 30 ? 'warning' : 'success';
  return <Chip size="small" variant="outlined" color={color} label={d < 0 ? `expired ${-d}d ago` : `${d} days left`} />;
}

function CaPanel() {
  const ca = useQuery({ queryKey: ['ca'], queryFn: () => get<Record<string, unknown>>('/ca'), retry: false });
  return (
    <Paper sx={{ p: 2, mb: 3 }}>
      <Typography variant="h6" component="h2">
        Certificate authority
      </Typography>
      {ca.error ? (
        <Unavailable error={ca.error} what="a certificate authority" />
      ) : (
        <Stack direction="row" spacing={2} sx={{ mt: 1, flexWrap: 'wrap' }}>
          {Object.entries(ca.data ?? {}).flatMap(([k, v]) =>
            v && typeof v === 'object'
              ? Object.entries(v as Record<string, unknown>)
                  .filter(([, x]) => typeof x !== 'object' && !String(x).includes('BEGIN'))
                  .map(([k2, x]) => (
                    <Typography key={`${k}.${k2}`} variant="body2">
                      <b>
                        {k} {k2}
                      </b>
                      : {String(x)}
                    </Typography>
                  ))
              : String(v).includes('BEGIN')
                ? []
                : [
                    <Typography key={k} variant="body2">
                      <b>{k}</b>: {String(v)}
                    </Typography>,
                  ],
          )}
          <Button size="small" color="secondary" href="/api/v1/ca.pem">
            Download CA (PEM)
          </Button>
        </Stack>
      )}
    </Paper>
  );
}

function ExpiryTimeline() {
  const certs = useList<Certificate>('certificates', { limit: 1000, sort: 'not_after' });
  const data = (certs.data?.items ?? []).map((c) => ({ name: c.name ?? `#${c.id}`, days: daysUntil(c.not_after) ?? 0 }));
  if (!data.length) return null;
  return (
    <Paper sx={{ p: 2, mb: 3 }}>
      <Typography variant="h6" component="h2">
        Expiry timeline (days left)
      </Typography>
      <Box sx={{ height: 180 }}>
        <ResponsiveContainer>
          <BarChart data={data} layout="vertical" margin={{ left: 40 }}>
            <XAxis type="number" stroke="#C7CBD1" />
            <YAxis type="category" dataKey="name" stroke="#C7CBD1" width={120} />
            <Tooltip contentStyle={{ background: brand.surface }} />
            <Bar dataKey="days">
              {data.map((d) => (
                <Cell key={d.name} fill={d.days < 0 ? '#FF8A80' : d.days < 30 ? brand.goldDeep : '#6EE7A0'} />
              ))}
            </Bar>
          </BarChart>
        </ResponsiveContainer>
      </Box>
    </Paper>
  );
}

export default function CertificatesPage() {
  const role = useAuth((s) => s.me?.role);
  const qc = useQueryClient();
  const [issuing, setIssuing] = useState(false);
  const [issued, setIssued] = useState<string | null>(null);
  const [error, setError] = useState<string | undefined>();
  return (
    <Box>
      <CaPanel />
      <ExpiryTimeline />
      {canWrite(role, 'certificates') && (
        <Button variant="outlined" color="secondary" sx={{ mb: 2 }} onClick={() => setIssuing(true)}>
          Issue from the CA
        </Button>
      )}
      {error && <Alert severity="error">{error}</Alert>}
      <ResourcePage<Certificate & Record<string, unknown>>
        resource="certificates"
        title="Certificates"
        noun="certificate"
        intro="Server certificates for ingress TLS and client certificates for service identity: import your own, or issue them from the manager's CA. Keys are sealed at rest."
        fields={importFields}
        actions={[
          {
            label: 'Revoke',
            confirm: 'Revoke this certificate? It goes into the CRL the proxies load.',
            run: async (c) => {
              await post(`/certificates/${c.id}/revoke`, { reason: 'superseded' });
            },
          },
        ]}
        columns={[
          { label: 'Name', render: (c) => c.name },
          { label: 'Kind', render: (c) => String(c.kind ?? 'imported') },
          { label: 'Description', render: (c) => c.description || '–' },
          { label: 'Revoked', render: (c) => (c.revoked ? `yes (${String(c.revoke_reason ?? '')})` : 'no') },
          { label: 'Expires', render: (c) => <ExpiryChip notAfter={c.not_after} /> },
          { label: 'Not after', render: (c) => c.not_after ?? '–' },
        ]}
      />
      <ResourceForm
        open={issuing}
        title="Issue a certificate"
        fields={issueFields}
        onClose={() => setIssuing(false)}
        onSubmit={async (body) => {
          setError(undefined);
          // Only what applies to the chosen kind: no empty SANs / common name.
          const sent = Object.fromEntries(
            Object.entries(body).filter(([, v]) => v !== '' && !(Array.isArray(v) && v.length === 0)),
          );
          const r = await post<{ key_pem?: string }>('/certificates/issue', sent);
          void qc.invalidateQueries({ queryKey: ['list', 'certificates'] });
          if (r.key_pem) setIssued(r.key_pem);
        }}
      />
      <SecretDialog title="Private key of the issued certificate" secret={issued} onClose={() => setIssued(null)} />
    </Box>
  );
}
