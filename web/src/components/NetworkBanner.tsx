// Shown while the manager cannot be reached (a request failed on the network, or the live socket is
// down); it goes away by itself once a request or the socket succeeds again. While down, it retries
// every few seconds.
import { useEffect } from 'react';
import { Alert } from '@mui/material';
import { useQueryClient } from '@tanstack/react-query';
import { useNet } from '../store/net';

export function NetworkBanner() {
  const apiDown = useNet((s) => s.apiDown);
  const live = useNet((s) => s.live);
  const qc = useQueryClient();
  const down = apiDown || live === 'down';
  useEffect(() => {
    if (!apiDown) return;
    const t = setInterval(() => void qc.refetchQueries({ type: 'active' }), 3000);
    return () => clearInterval(t);
  }, [apiDown, qc]);
  if (!down) return null;
  return (
    <Alert severity="warning" role="status" sx={{ mb: 2 }} data-testid="network-banner">
      {apiDown
        ? 'Cannot reach the manager. Retrying… (changes you make now will fail until it is back)'
        : 'Live updates are paused: reconnecting to the manager…'}
    </Alert>
  );
}
