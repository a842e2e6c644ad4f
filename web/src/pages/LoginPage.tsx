import { useState } from 'react';
import { Alert, Box, Button, Paper, Stack, TextField, Typography } from '@mui/material';
import { api } from '../api/client';
import { ApiError } from '../api/problem';
import { useAuth } from '../store/auth';
import { brand } from '../theme';

interface Tokens {
  access_token: string;
  refresh_token: string;
}

export default function LoginPage() {
  const setTokens = useAuth((s) => s.setTokens);
  const [username, setUsername] = useState('');
  const [password, setPassword] = useState('');
  const [code, setCode] = useState('');
  const [needCode, setNeedCode] = useState(false);
  const [error, setError] = useState<string | undefined>();
  const [busy, setBusy] = useState(false);

  const submit = async () => {
    setError(undefined);
    if (needCode && !/^(\d{6}|[A-Za-z0-9-]{8,})$/.test(code.trim())) {
      setError('Enter the 6-digit code from your authenticator app (or a backup code).');
      return;
    }
    setBusy(true);
    try {
      const r = await api<Tokens>('/auth/login', {
        method: 'POST',
        auth: false,
        body: { username, password, ...(needCode ? { totp_code: code.trim() } : {}) },
      });
      setTokens({ access: r.access_token, refresh: r.refresh_token });
    } catch (e) {
      if (e instanceof ApiError && e.slug === 'totp-required') {
        setNeedCode(true);
      } else if (e instanceof ApiError && e.status === 429) {
        setError(`Too many failed attempts: ${e.detail}`);
      } else {
        setError(e instanceof Error ? e.message : String(e));
      }
    } finally {
      setBusy(false);
    }
  };

  return (
    <Box component="main" sx={{ minHeight: '100vh', display: 'grid', placeItems: 'center', bgcolor: brand.bg }}>
      <Paper sx={{ p: 4, width: 380, borderTop: `4px solid ${brand.gold}` }}>
        <Typography variant="h4" component="h1" sx={{ color: brand.gold, fontWeight: 700, mb: 1 }}>
          MarchProxy
        </Typography>
        <Typography color="text.secondary" sx={{ mb: 3 }}>
          {needCode ? 'Two-factor authentication' : 'Sign in to the manager'}
        </Typography>
        <Stack
          component="form"
          spacing={2}
          onSubmit={(e) => {
            e.preventDefault();
            void submit();
          }}
        >
          {error && (
            <Alert severity="error" data-testid="login-error">
              {error}
            </Alert>
          )}
          {!needCode ? (
            <>
              <TextField label="User name" autoComplete="username" value={username} onChange={(e) => setUsername(e.target.value)} required autoFocus />
              <TextField label="Password" type="password" autoComplete="current-password" value={password} onChange={(e) => setPassword(e.target.value)} required />
            </>
          ) : (
            <TextField
              label="Authentication code"
              autoComplete="one-time-code"
              value={code}
              onChange={(e) => setCode(e.target.value)}
              slotProps={{ htmlInput: { inputMode: 'numeric', 'data-field': 'totp_code' } }}
              helperText="6 digits from your authenticator app, or a backup code"
              required
              autoFocus
            />
          )}
          <Button type="submit" variant="contained" color="secondary" disabled={busy}>
            {needCode ? 'Verify' : 'Sign in'}
          </Button>
          {needCode && (
            <Button onClick={() => { setNeedCode(false); setCode(''); }}>Back</Button>
          )}
        </Stack>
      </Paper>
    </Box>
  );
}
