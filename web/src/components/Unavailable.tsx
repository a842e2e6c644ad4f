import { Alert } from '@mui/material';
import { ApiError } from '../api/problem';

// For pages over routes a manager may not have yet (older manager): say so instead of failing.
export function Unavailable({ error, what }: { error: unknown; what: string }) {
  if (error instanceof ApiError && error.status === 404)
    return <Alert severity="info">This manager does not provide {what} yet (404 from the API).</Alert>;
  return <Alert severity="error">{error instanceof Error ? error.message : String(error)}</Alert>;
}
