import { Box, Chip, Paper, Stack, Typography } from '@mui/material';
import { useQuery } from '@tanstack/react-query';
import { get } from '../api/client';
import { Unavailable } from '../components/Unavailable';

interface License {
  edition: string;
  status: string;
  customer?: string;
  max_proxies?: number;
  proxies?: number;
  features?: string[];
  expires_at?: string;
  grace_ends_at?: string;
  problem?: string;
}

export default function LicensePage() {
  const lic = useQuery({ queryKey: ['license'], queryFn: () => get<License>('/license'), retry: false });
  const l = lic.data;
  return (
    <Box>
      <Typography variant="h5" component="h1" sx={{ mb: 2 }}>
        Licence
      </Typography>
      {lic.error && <Unavailable error={lic.error} what="licence status" />}
      {l && (
        <Paper sx={{ p: 2, maxWidth: 640 }}>
          <Stack spacing={1}>
            <Typography>
              Edition: <b>{l.edition}</b>{' '}
              <Chip size="small" variant="outlined" color={l.status === 'valid' ? 'success' : 'warning'} label={l.status} />
            </Typography>
            {l.customer && <Typography>Customer: {l.customer}</Typography>}
            <Typography>
              Proxies allowed: {l.max_proxies ?? '?'}
              {l.proxies !== undefined ? ` (${l.proxies} registered)` : ''}
            </Typography>
            {l.expires_at && <Typography>Expires: {l.expires_at}</Typography>}
            {l.grace_ends_at && <Typography>Grace period ends: {l.grace_ends_at}</Typography>}
            {l.features && l.features.length > 0 && <Typography>Features: {l.features.join(', ')}</Typography>}
            {l.problem && <Typography color="error">{l.problem}</Typography>}
          </Stack>
        </Paper>
      )}
    </Box>
  );
}
