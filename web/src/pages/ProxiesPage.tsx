import { Alert, Box, Chip, Paper, Table, TableBody, TableCell, TableContainer, TableHead, TableRow, Typography } from '@mui/material';
import type { Proxy } from '../api/types';
import { useList } from '../components/ResourcePage';
import { ClusterName } from '../components/ClusterName';
import { Unavailable } from '../components/Unavailable';
import { ago } from '../lib/time';
import { ExpiryChip } from './CertificatesPage';

export function StatusChip({ status }: { status: Proxy['status'] }) {
  const color = status === 'online' ? 'success' : status === 'stale' ? 'warning' : 'error';
  return <Chip size="small" color={color} variant="outlined" label={status} data-testid={`proxy-status-${status}`} />;
}

export default function ProxiesPage() {
  const proxies = useList<Proxy>('proxies', { limit: 1000 });
  return (
    <Box>
      <Typography variant="h5" component="h1" sx={{ mb: 1 }}>
        Proxies
      </Typography>
      <Typography variant="body2" color="text.secondary" sx={{ mb: 2 }}>
        Registered ingress and egress proxies, their last heartbeat, and whether they run the cluster's current
        configuration (drift).
      </Typography>
      {proxies.error && <Unavailable error={proxies.error} what="proxy status" />}
      <TableContainer component={Paper}>
        <Table size="small" aria-label="Proxies">
          <TableHead>
            <TableRow>
              {['Name', 'Cluster', 'Type', 'Status', 'Version', 'Config (applied / current)', 'Last heartbeat', 'Requests', 'Errors', 'Certificate'].map(
                (h) => (
                  <TableCell key={h}>{h}</TableCell>
                ),
              )}
            </TableRow>
          </TableHead>
          <TableBody>
            {(proxies.data?.items ?? []).map((p) => (
              <TableRow key={p.id} data-testid={`row-proxies-${p.name}`}>
                <TableCell>{p.name}</TableCell>
                <TableCell>
                  <ClusterName id={p.cluster_id} />
                </TableCell>
                <TableCell>{p.kind}</TableCell>
                <TableCell>
                  <StatusChip status={p.status} />
                </TableCell>
                <TableCell>{p.version ?? '–'}</TableCell>
                <TableCell>
                  {p.applied_version ?? '–'} / {p.config_version ?? '–'}{' '}
                  {p.drift && <Chip size="small" color="warning" label="drift" />}
                  {p.error?.message && (
                    <Alert severity="error" sx={{ mt: 0.5, py: 0 }}>
                      v{p.error.version}: {p.error.message}
                    </Alert>
                  )}
                </TableCell>
                <TableCell>{ago(p.last_seen)}</TableCell>
                <TableCell>{p.counters?.requests ?? '–'}</TableCell>
                <TableCell>{p.counters?.errors ?? '–'}</TableCell>
                <TableCell>
                  <ExpiryChip notAfter={p.certificate_not_after} />
                </TableCell>
              </TableRow>
            ))}
            {proxies.data && proxies.data.items.length === 0 && (
              <TableRow>
                <TableCell colSpan={10}>No proxies have registered yet. Start one with the cluster's API key.</TableCell>
              </TableRow>
            )}
          </TableBody>
        </Table>
      </TableContainer>
    </Box>
  );
}
