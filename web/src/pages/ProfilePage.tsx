import { useEffect, useState } from 'react';
import { Alert, Box, Button, List, ListItem, ListItemText, Paper, Stack, TextField, Typography } from '@mui/material';
import { useQuery, useQueryClient } from '@tanstack/react-query';
import QRCode from 'qrcode';
import { del, get, post } from '../api/client';
import { fieldErrors } from '../api/problem';
import type { Me } from '../api/types';
import { SecretDialog } from '../components/SecretDialog';
import { useAuth } from '../store/auth';

function PasswordForm() {
  const logout = useAuth((s) => s.logout);
  const [current, setCurrent] = useState('');
  const [next, setNext] = useState('');
  const [errors, setErrors] = useState<Record<string, string>>({});
  const [general, setGeneral] = useState<string | undefined>();
  const submit = async () => {
    setGeneral(undefined);
    if (next.length < 12) {
      setErrors({ new_password: 'at least 12 characters' });
      return;
    }
    setErrors({});
    try {
      await post('/auth/password', { current_password: current, new_password: next });
      logout(); // the server revoked every session
    } catch (e) {
      const fe = fieldErrors(e, ['current_password', 'new_password']);
      setErrors(fe.byField);
      setGeneral(fe.general);
    }
  };
  return (
    <Paper sx={{ p: 2 }}>
      <Typography variant="h6" component="h2" sx={{ mb: 1 }}>
        Password
      </Typography>
      <Stack spacing={2} component="form" onSubmit={(e) => { e.preventDefault(); void submit(); }}>
        {general && <Alert severity="error">{general}</Alert>}
        <TextField label="Current password" type="password" autoComplete="current-password" value={current} onChange={(e) => setCurrent(e.target.value)} error={Boolean(errors.current_password)} helperText={errors.current_password} />
        <TextField label="New password (≥ 12 characters)" type="password" autoComplete="new-password" value={next} onChange={(e) => setNext(e.target.value)} error={Boolean(errors.new_password)} helperText={errors.new_password} />
        <Button type="submit" variant="outlined" color="secondary">
          Change password (signs you out everywhere)
        </Button>
      </Stack>
    </Paper>
  );
}

function TotpPanel({ me }: { me: Me }) {
  const qc = useQueryClient();
  const [enroll, setEnroll] = useState<{ secret: string; otpauth_uri: string } | null>(null);
  const [qr, setQr] = useState<string>('');
  const [code, setCode] = useState('');
  const [password, setPassword] = useState('');
  const [backup, setBackup] = useState<string[] | null>(null);
  const [error, setError] = useState<string | undefined>();
  useEffect(() => {
    if (enroll) void QRCode.toDataURL(enroll.otpauth_uri, { margin: 1, width: 200 }).then(setQr);
  }, [enroll]);
  const run = async (f: () => Promise<void>) => {
    setError(undefined);
    try {
      await f();
    } catch (e) {
      setError(e instanceof Error ? e.message : String(e));
    }
  };
  return (
    <Paper sx={{ p: 2 }}>
      <Typography variant="h6" component="h2" sx={{ mb: 1 }}>
        Two-factor authentication {me.totp_enabled ? '(on)' : '(off)'}
      </Typography>
      {error && <Alert severity="error" sx={{ mb: 1 }}>{error}</Alert>}
      {backup && (
        <Alert severity="success" sx={{ mb: 1 }}>
          2FA is on. Backup codes (single use, shown once): <code data-testid="backup-codes">{backup.join(' ')}</code>
        </Alert>
      )}
      {!me.totp_enabled && !enroll && (
        <Button variant="outlined" color="secondary" onClick={() => void run(async () => setEnroll(await post('/auth/totp/enroll')))}>
          Set up an authenticator app
        </Button>
      )}
      {!me.totp_enabled && enroll && (
        <Stack spacing={2}>
          <Typography variant="body2">Scan this code with your authenticator app, then enter the code it shows.</Typography>
          {qr && <img src={qr} width={200} height={200} alt="QR code for the authenticator app" />}
          <Typography variant="body2">
            Or enter the key: <code data-testid="totp-secret">{enroll.secret}</code>
          </Typography>
          <TextField label="Code from the app" value={code} onChange={(e) => setCode(e.target.value)} slotProps={{ htmlInput: { inputMode: 'numeric' } }} />
          <Button
            variant="contained"
            color="secondary"
            onClick={() =>
              void run(async () => {
                if (!/^\d{6}$/.test(code)) throw new Error('enter the 6-digit code');
                const r = await post<{ backup_codes: string[] }>('/auth/totp/verify', { code });
                setBackup(r.backup_codes);
                setEnroll(null);
                void qc.invalidateQueries({ queryKey: ['me'] });
              })
            }
          >
            Turn on 2FA
          </Button>
        </Stack>
      )}
      {me.totp_enabled && (
        <Stack direction="row" spacing={2}>
          <TextField label="Password" type="password" value={password} onChange={(e) => setPassword(e.target.value)} />
          <Button color="error" onClick={() => void run(async () => { await post('/auth/totp/disable', { password }); void qc.invalidateQueries({ queryKey: ['me'] }); })}>
            Turn off 2FA
          </Button>
        </Stack>
      )}
    </Paper>
  );
}

interface Token {
  id: number;
  name: string;
  created_at: string;
  revoked: boolean;
}

function TokensPanel() {
  const qc = useQueryClient();
  const tokens = useQuery({ queryKey: ['tokens'], queryFn: () => get<{ items: Token[] }>('/auth/tokens') });
  const [name, setName] = useState('');
  const [secret, setSecret] = useState<string | null>(null);
  const [error, setError] = useState<string | undefined>();
  const create = async () => {
    setError(undefined);
    try {
      const r = await post<{ token: string }>('/auth/tokens', { name });
      setSecret(r.token);
      setName('');
      void qc.invalidateQueries({ queryKey: ['tokens'] });
    } catch (e) {
      setError(fieldErrors(e, []).general);
    }
  };
  return (
    <Paper sx={{ p: 2 }}>
      <Typography variant="h6" component="h2" sx={{ mb: 1 }}>
        API tokens
      </Typography>
      {error && <Alert severity="error">{error}</Alert>}
      <Stack direction="row" spacing={2}>
        <TextField label="Token name" value={name} onChange={(e) => setName(e.target.value)} />
        <Button variant="outlined" color="secondary" onClick={() => void create()} disabled={!name}>
          Create
        </Button>
      </Stack>
      <List dense>
        {(tokens.data?.items ?? []).filter((t) => !t.revoked).map((t) => (
          <ListItem
            key={t.id}
            secondaryAction={
              <Button size="small" color="error" onClick={async () => { await del(`/auth/tokens/${t.id}`); void qc.invalidateQueries({ queryKey: ['tokens'] }); }}>
                Revoke
              </Button>
            }
          >
            <ListItemText primary={t.name} secondary={`created ${t.created_at}`} />
          </ListItem>
        ))}
      </List>
      <SecretDialog title="API token" secret={secret} onClose={() => setSecret(null)} />
    </Paper>
  );
}

export default function ProfilePage() {
  const me = useQuery({ queryKey: ['me'], queryFn: () => get<Me>('/auth/me') });
  return (
    <Box sx={{ maxWidth: 720 }}>
      <Typography variant="h5" component="h1" sx={{ mb: 2 }}>
        Profile: {me.data?.username} ({me.data?.role})
      </Typography>
      <Stack spacing={2}>
        <PasswordForm />
        {me.data && <TotpPanel me={me.data} />}
        <TokensPanel />
      </Stack>
    </Box>
  );
}
