import { useState } from 'react';
import { Alert, Box, MenuItem, Paper, Stack, Table, TableBody, TableCell, TableContainer, TableHead, TableRow, TextField, Typography } from '@mui/material';
import { useQuery } from '@tanstack/react-query';
import { get } from '../api/client';
import type { AuditEntry } from '../api/types';
import { useList } from '../components/ResourcePage';

interface Verify {
  ok: boolean;
  rows_verified?: number;
  first_broken_id?: number;
  reason?: string;
}

export function ChainStatus() {
  const v = useQuery({ queryKey: ['list', 'audit', 'verify'], queryFn: () => get<Verify>('/audit/verify') });
  if (!v.data) return null;
  return v.data.ok ? (
    <Alert severity="success" data-testid="audit-chain">
      Hash chain verified: {v.data.rows_verified} entries, none modified, removed or reordered.
    </Alert>
  ) : (
    <Alert severity="error" data-testid="audit-chain">
      Hash chain BROKEN at entry {v.data.first_broken_id}: {v.data.reason}
    </Alert>
  );
}

export function AuditTable({ items }: { items: AuditEntry[] }) {
  return (
    <TableContainer component={Paper}>
      <Table size="small" aria-label="Audit log">
        <TableHead>
          <TableRow>
            {['Time', 'Actor', 'Action', 'Resource', 'Outcome', 'Summary', 'Source'].map((h) => (
              <TableCell key={h}>{h}</TableCell>
            ))}
          </TableRow>
        </TableHead>
        <TableBody>
          {items.map((a) => (
            <TableRow key={a.id} data-testid={`audit-${a.action}`}>
              <TableCell sx={{ whiteSpace: 'nowrap' }}>{a.ts}</TableCell>
              <TableCell>{a.actor}</TableCell>
              <TableCell>{a.action}</TableCell>
              <TableCell>{a.resource}</TableCell>
              <TableCell sx={{ color: a.outcome === 'success' ? 'success.main' : 'error.main' }}>{a.outcome}</TableCell>
              <TableCell>{a.summary}</TableCell>
              <TableCell>{a.source_ip}</TableCell>
            </TableRow>
          ))}
        </TableBody>
      </Table>
    </TableContainer>
  );
}

export default function AuditPage() {
  const [actor, setActor] = useState('');
  const [action, setAction] = useState('');
  const [resource, setResource] = useState('');
  const [outcome, setOutcome] = useState('');
  const list = useList<AuditEntry>('audit', { actor, action, resource, outcome, limit: 200 });
  return (
    <Box>
      <Typography variant="h5" component="h1" sx={{ mb: 2 }}>
        Audit log
      </Typography>
      <Box sx={{ mb: 2 }}>
        <ChainStatus />
      </Box>
      <Stack direction="row" spacing={2} sx={{ mb: 2 }}>
        <TextField label="Actor" value={actor} onChange={(e) => setActor(e.target.value)} />
        <TextField label="Action (e.g. cluster.create)" value={action} onChange={(e) => setAction(e.target.value)} />
        <TextField label="Resource (e.g. clusters/3)" value={resource} onChange={(e) => setResource(e.target.value)} />
        <TextField select label="Outcome" value={outcome} onChange={(e) => setOutcome(e.target.value)}>
          <MenuItem value="">any</MenuItem>
          <MenuItem value="success">success</MenuItem>
          <MenuItem value="failure">failure</MenuItem>
          <MenuItem value="denied">denied</MenuItem>
        </TextField>
      </Stack>
      {list.error && <Alert severity="error">{list.error.message}</Alert>}
      <AuditTable items={list.data?.items ?? []} />
      {list.data && (
        <Typography variant="caption" color="text.secondary">
          {list.data.total} entries
        </Typography>
      )}
    </Box>
  );
}
