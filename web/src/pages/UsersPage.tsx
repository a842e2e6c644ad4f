import { useState } from 'react';
import { Alert, Box, Button, Dialog, DialogActions, DialogContent, DialogTitle, Paper, Stack, Table, TableBody, TableCell, TableContainer, TableHead, TableRow, Typography } from '@mui/material';
import { useQuery, useQueryClient } from '@tanstack/react-query';
import { del, get, patch, post } from '../api/client';
import type { List, User } from '../api/types';
import { Field, ResourceForm } from '../components/ResourceForm';
import type { FieldDef } from '../lib/form';

const createFields: FieldDef[] = [
  { name: 'username', label: 'User name', kind: 'text', required: true, createOnly: true, check: (s) => (/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(s) ? undefined : "letters, digits, '.', '_' and '-'") },
  { name: 'email', label: 'Email', kind: 'text' },
  { name: 'role', label: 'Role', kind: 'select', options: ['admin', 'service-owner', 'viewer'], required: true, defaultValue: 'viewer' },
  { name: 'password', label: 'Password (≥ 12 characters)', kind: 'text', writeOnly: true, check: (s) => (s.length >= 12 ? undefined : 'at least 12 characters') },
  { name: 'disabled', label: 'Disabled', kind: 'bool' },
];

type U = User & { id: number; version: number; username: string; role: string; disabled?: boolean; totp_enabled?: boolean };

function Assignments({ user, onClose }: { user: U; onClose: () => void }) {
  const qc = useQueryClient();
  const a = useQuery({
    queryKey: ['assignments', user.id],
    queryFn: () => get<{ cluster_ids: number[]; service_ids: number[] }>(`/users/${user.id}/assignments`),
  });
  const [clusters, setClusters] = useState<number[] | null>(null);
  const [services, setServices] = useState<number[] | null>(null);
  const [error, setError] = useState<string | undefined>();
  const save = async () => {
    if (!a.data) return;
    try {
      const sync = async (kind: 'clusters' | 'services', have: number[], want: number[] | null, key: string) => {
        if (!want) return;
        for (const id of want.filter((x) => !have.includes(x))) await post(`/users/${user.id}/${kind}`, { [key]: id });
        for (const id of have.filter((x) => !want.includes(x))) await del(`/users/${user.id}/${kind}/${id}`);
      };
      await sync('clusters', a.data.cluster_ids, clusters, 'cluster_id');
      await sync('services', a.data.service_ids, services, 'service_id');
      void qc.invalidateQueries({ queryKey: ['assignments', user.id] });
      onClose();
    } catch (e) {
      setError(e instanceof Error ? e.message : String(e));
    }
  };
  return (
    <Dialog open onClose={onClose} fullWidth maxWidth="sm">
      <DialogTitle>Assignments of {user.username}</DialogTitle>
      <DialogContent>
        <Typography variant="body2" color="text.secondary" sx={{ mb: 2 }}>
          A service owner reads and edits the clusters and services assigned here (a cluster covers its services).
        </Typography>
        {error && <Alert severity="error">{error}</Alert>}
        {a.data && (
          <Stack spacing={2}>
            <Field f={{ name: 'clusters', label: 'Clusters', kind: 'ids', ref: 'clusters' }} value={clusters ?? a.data.cluster_ids} onChange={(v) => setClusters(v as number[])} />
            <Field f={{ name: 'services', label: 'Services', kind: 'ids', ref: 'services' }} value={services ?? a.data.service_ids} onChange={(v) => setServices(v as number[])} />
          </Stack>
        )}
      </DialogContent>
      <DialogActions>
        <Button onClick={onClose}>Cancel</Button>
        <Button variant="contained" color="secondary" onClick={() => void save()}>
          Save
        </Button>
      </DialogActions>
    </Dialog>
  );
}

export default function UsersPage() {
  const qc = useQueryClient();
  const users = useQuery({ queryKey: ['list', 'users'], queryFn: () => get<List<U>>('/users') });
  const [creating, setCreating] = useState(false);
  const [editing, setEditing] = useState<U | null>(null);
  const [assigning, setAssigning] = useState<U | null>(null);
  const [error, setError] = useState<string | undefined>();
  const refresh = () => void qc.invalidateQueries({ queryKey: ['list', 'users'] });
  return (
    <Box>
      <Stack direction="row" sx={{ mb: 2 }}>
        <Typography variant="h5" component="h1" sx={{ flexGrow: 1 }}>
          Users and roles
        </Typography>
        <Button variant="contained" color="secondary" onClick={() => setCreating(true)}>
          New user
        </Button>
      </Stack>
      <Typography variant="body2" color="text.secondary" sx={{ mb: 2 }}>
        admin: everything · service-owner: the clusters and services assigned to them · viewer: reads configuration, no
        audit log.
      </Typography>
      {error && <Alert severity="error" onClose={() => setError(undefined)}>{error}</Alert>}
      <TableContainer component={Paper}>
        <Table size="small" aria-label="Users">
          <TableHead>
            <TableRow>
              {['User', 'Email', 'Role', '2FA', 'State', ''].map((h) => (
                <TableCell key={h}>{h}</TableCell>
              ))}
            </TableRow>
          </TableHead>
          <TableBody>
            {(users.data?.items ?? []).map((u) => (
              <TableRow key={u.id} data-testid={`row-users-${u.username}`}>
                <TableCell>{u.username}</TableCell>
                <TableCell>{u.email || '–'}</TableCell>
                <TableCell>{u.role}</TableCell>
                <TableCell>{u.totp_enabled ? 'on' : 'off'}</TableCell>
                <TableCell>{u.disabled ? 'disabled' : 'active'}</TableCell>
                <TableCell align="right" sx={{ whiteSpace: 'nowrap' }}>
                  {u.role === 'service-owner' && (
                    <Button size="small" color="secondary" onClick={() => setAssigning(u)}>
                      Assignments
                    </Button>
                  )}
                  <Button size="small" color="secondary" onClick={() => setEditing(u)}>
                    Edit
                  </Button>
                  <Button
                    size="small"
                    color="error"
                    onClick={async () => {
                      if (!window.confirm(`Delete user ${u.username}?`)) return;
                      try {
                        await del(`/users/${u.id}`, u.version);
                        refresh();
                      } catch (e) {
                        setError(e instanceof Error ? e.message : String(e));
                      }
                    }}
                  >
                    Delete
                  </Button>
                </TableCell>
              </TableRow>
            ))}
          </TableBody>
        </Table>
      </TableContainer>
      <ResourceForm
        open={creating}
        title="New user"
        fields={createFields.map((f) => (f.name === 'password' ? { ...f, required: true } : f))}
        onClose={() => setCreating(false)}
        onSubmit={async (body) => {
          await post('/users', body);
          refresh();
        }}
      />
      <ResourceForm
        open={editing !== null}
        title={`Edit ${editing?.username ?? ''}`}
        fields={createFields}
        initial={editing ?? undefined}
        onClose={() => setEditing(null)}
        onSubmit={async (body) => {
          if (!editing) return;
          await patch(`/users/${editing.id}`, body, editing.version);
          refresh();
        }}
      />
      {assigning && <Assignments user={assigning} onClose={() => setAssigning(null)} />}
    </Box>
  );
}
