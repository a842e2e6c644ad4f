// A list page for one configuration resource: search, optional cluster filter, table, and (for roles
// that may write) create / edit / delete / extra actions. Live events keep the list current.
import { useState, type ReactNode } from 'react';
import {
  Alert,
  Box,
  Button,
  Dialog,
  DialogActions,
  DialogContent,
  DialogTitle,
  MenuItem,
  Paper,
  Stack,
  Table,
  TableBody,
  TableCell,
  TableContainer,
  TableHead,
  TableRow,
  TextField,
  Typography,
} from '@mui/material';
import { keepPreviousData, useQuery, useQueryClient } from '@tanstack/react-query';
import { del, get, patch, post } from '../api/client';
import type { List } from '../api/types';
import { canCreate, canWrite, useAuth } from '../store/auth';
import type { FieldDef } from '../lib/form';
import { ResourceForm } from './ResourceForm';
import { SecretDialog } from './SecretDialog';

export interface Column<T> {
  label: string;
  render: (o: T) => ReactNode;
}

export interface Action<T> {
  label: string;
  run: (o: T) => Promise<{ secret?: string; title?: string } | void>;
  confirm?: string;
}

type Obj = { id: number; version: number; name?: string; cluster_id?: number } & Record<string, unknown>;

export interface ResourcePageProps<T extends Obj> {
  resource: 'clusters' | 'services' | 'mappings' | 'forwards' | 'routes' | 'certificates';
  title: string;
  intro: ReactNode;
  noun: string;
  fields: readonly FieldDef[];
  columns: Column<T>[];
  clusterFilter?: boolean;
  secretOnCreate?: { key: string; title: string };
  actions?: Action<T>[];
  editable?: boolean; // default true
}

export function useList<T>(resource: string, params: Record<string, string | number | undefined> = {}) {
  const qs = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== '') qs.set(k, String(v));
  const q = qs.toString();
  return useQuery({
    queryKey: ['list', resource, q],
    queryFn: () => get<List<T>>(`/${resource}${q ? `?${q}` : ''}`),
    placeholderData: keepPreviousData,
  });
}

export function ResourcePage<T extends Obj>(props: ResourcePageProps<T>) {
  const { resource, title, intro, noun, fields, columns, clusterFilter, secretOnCreate, actions = [] } = props;
  const role = useAuth((s) => s.me?.role);
  const qc = useQueryClient();
  const [search, setSearch] = useState('');
  const [cluster, setCluster] = useState('');
  const [editing, setEditing] = useState<T | null>(null);
  const [creating, setCreating] = useState(false);
  const [deleting, setDeleting] = useState<T | null>(null);
  const [secret, setSecret] = useState<{ title: string; value: string } | null>(null);
  const [actionError, setActionError] = useState<string | undefined>();
  const list = useList<T>(resource, { q: search, cluster_id: cluster || undefined, limit: 500, sort: 'name' });
  const clusters = useList<{ id: number; name: string }>('clusters', { limit: 1000, sort: 'name' });
  const writer = props.editable !== false && canWrite(role, resource);
  const creator = props.editable !== false && canCreate(role, resource);
  const refresh = () => void qc.invalidateQueries({ queryKey: ['list', resource] });

  const runAction = async (a: Action<T>, o: T) => {
    setActionError(undefined);
    if (a.confirm && !window.confirm(a.confirm)) return;
    try {
      const r = await a.run(o);
      if (r?.secret) setSecret({ title: r.title ?? 'Secret', value: r.secret });
      refresh();
    } catch (e) {
      setActionError(e instanceof Error ? e.message : String(e));
    }
  };

  return (
    <Box>
      <Stack direction="row" spacing={2} sx={{ mb: 1, alignItems: 'center' }}>
        <Typography variant="h5" component="h1" sx={{ flexGrow: 1 }}>
          {title}
        </Typography>
        {creator && (
          <Button variant="contained" color="secondary" onClick={() => setCreating(true)}>
            New {noun}
          </Button>
        )}
      </Stack>
      <Typography variant="body2" color="text.secondary" sx={{ mb: 2 }}>
        {intro}
      </Typography>
      <Stack direction="row" spacing={2} sx={{ mb: 2, maxWidth: 640 }}>
        <TextField label="Search by name" value={search} onChange={(e) => setSearch(e.target.value)} />
        {clusterFilter && (
          <TextField select label="Cluster" value={cluster} onChange={(e) => setCluster(e.target.value)}>
            <MenuItem value="">All clusters</MenuItem>
            {(clusters.data?.items ?? []).map((c) => (
              <MenuItem key={c.id} value={String(c.id)}>
                {c.name}
              </MenuItem>
            ))}
          </TextField>
        )}
      </Stack>
      {list.error && <Alert severity="error">{list.error.message}</Alert>}
      {actionError && (
        <Alert severity="error" onClose={() => setActionError(undefined)} sx={{ mb: 2 }}>
          {actionError}
        </Alert>
      )}
      <TableContainer component={Paper}>
        <Table size="small" aria-label={title}>
          <TableHead>
            <TableRow>
              {columns.map((c) => (
                <TableCell key={c.label}>{c.label}</TableCell>
              ))}
              {(writer || actions.length > 0) && <TableCell align="right">Actions</TableCell>}
            </TableRow>
          </TableHead>
          <TableBody>
            {(list.data?.items ?? []).map((o) => (
              <TableRow key={o.id} data-testid={`row-${resource}-${o.name ?? o.id}`}>
                {columns.map((c) => (
                  <TableCell key={c.label}>{c.render(o)}</TableCell>
                ))}
                {(writer || actions.length > 0) && (
                  <TableCell align="right" sx={{ whiteSpace: 'nowrap' }}>
                    {writer &&
                      actions.map((a) => (
                        <Button key={a.label} size="small" color="secondary" onClick={() => void runAction(a, o)}>
                          {a.label}
                        </Button>
                      ))}
                    {writer && (
                      <Button size="small" color="secondary" onClick={() => setEditing(o)}>
                        Edit
                      </Button>
                    )}
                    {writer && (
                      <Button size="small" color="error" onClick={() => setDeleting(o)}>
                        Delete
                      </Button>
                    )}
                  </TableCell>
                )}
              </TableRow>
            ))}
            {list.data && list.data.items.length === 0 && (
              <TableRow>
                <TableCell colSpan={columns.length + 1}>
                  <Typography color="text.secondary">No {noun}s yet.</Typography>
                </TableCell>
              </TableRow>
            )}
          </TableBody>
        </Table>
      </TableContainer>
      {list.data && (
        <Typography variant="caption" color="text.secondary">
          {list.data.total} {noun}
          {list.data.total === 1 ? '' : 's'}
        </Typography>
      )}

      <ResourceForm
        open={creating}
        title={`New ${noun}`}
        fields={fields}
        onClose={() => setCreating(false)}
        onSubmit={async (body) => {
          const r = await post<Record<string, unknown>>(`/${resource}`, body);
          refresh();
          const s = secretOnCreate ? r[secretOnCreate.key] : undefined;
          if (secretOnCreate && typeof s === 'string') setSecret({ title: secretOnCreate.title, value: s });
        }}
      />
      <ResourceForm
        open={editing !== null}
        title={`Edit ${noun} ${editing?.name ?? ''}`}
        fields={fields}
        initial={editing ?? undefined}
        onClose={() => setEditing(null)}
        onSubmit={async (body) => {
          if (!editing) return;
          await patch(`/${resource}/${editing.id}`, body, editing.version);
          refresh();
        }}
      />
      <Dialog open={deleting !== null} onClose={() => setDeleting(null)}>
        <DialogTitle>
          Delete {noun} {deleting?.name}?
        </DialogTitle>
        <DialogContent>
          <Typography>This takes effect on the proxies at their next configuration fetch.</Typography>
          {actionError && <Alert severity="error">{actionError}</Alert>}
        </DialogContent>
        <DialogActions>
          <Button onClick={() => setDeleting(null)}>Cancel</Button>
          <Button
            color="error"
            variant="contained"
            onClick={async () => {
              if (!deleting) return;
              try {
                await del(`/${resource}/${deleting.id}`, deleting.version);
                setDeleting(null);
                refresh();
              } catch (e) {
                setActionError(e instanceof Error ? e.message : String(e));
              }
            }}
          >
            Delete
          </Button>
        </DialogActions>
      </Dialog>
      <SecretDialog title={secret?.title ?? ''} secret={secret?.value ?? null} onClose={() => setSecret(null)} />
    </Box>
  );
}

export const rotate = {
  clusterKey: async (o: { id: number }) => {
    const r = await post<{ api_key: string }>(`/clusters/${o.id}/rotate-key`, { grace_seconds: 3600 });
    return { secret: r.api_key, title: 'New cluster API key (the old one works for 1 more hour)' };
  },
  serviceSecret: async (o: { id: number }) => {
    const r = await post<{ secret: string }>(`/services/${o.id}/rotate-secret`, {});
    return { secret: r.secret, title: 'New service secret' };
  },
};
