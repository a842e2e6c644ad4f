import { useEffect, useRef, useState } from 'react';
import { Alert, Box, Card, CardContent, Grid, Paper, Stack, Typography } from '@mui/material';
import { CartesianGrid, Legend, Line, LineChart, ResponsiveContainer, Tooltip, XAxis, YAxis } from 'recharts';
import type { AuditEntry, Certificate, Proxy } from '../api/types';
import { useList } from '../components/ResourcePage';
import { clusterRates, type Sample } from '../lib/rates';
import { daysUntil } from '../lib/time';
import { useAuth } from '../store/auth';
import { brand } from '../theme';
import { AuditTable } from './AuditPage';

const COLORS = [brand.gold, '#93C5FD', '#6EE7A0', '#F9A8D4', '#FDBA74', '#C4B5FD'];

function Stat({ label, value, tone }: { label: string; value: number | string; tone?: 'good' | 'warn' }) {
  return (
    <Card>
      <CardContent>
        <Typography variant="body2" color="text.secondary">
          {label}
        </Typography>
        <Typography
          variant="h4"
          component="p"
          data-testid={`stat-${label}`}
          sx={{ color: tone === 'good' ? 'success.main' : tone === 'warn' ? 'warning.main' : 'text.primary' }}
        >
          {value}
        </Typography>
      </CardContent>
    </Card>
  );
}

type Point = { t: string } & Record<string, number | string>;

export default function DashboardPage() {
  const admin = useAuth((s) => s.me?.role === 'admin');
  const proxies = useList<Proxy>('proxies', { limit: 1000 });
  const clusters = useList<{ id: number; name: string }>('clusters', { limit: 1000, sort: 'name' });
  const services = useList<{ id: number }>('services', { limit: 1 });
  const certs = useList<Certificate>('certificates', { limit: 1000, sort: 'not_after' });
  const prev = useRef(new Map<number, Sample>());
  const [history, setHistory] = useState<Point[]>([]);

  useEffect(() => {
    if (!proxies.data) return;
    const rates = clusterRates(proxies.data.items, prev.current, Date.now());
    const point: Point = { t: new Date().toLocaleTimeString() };
    for (const [cid, r] of Object.entries(rates)) {
      const name = clusters.data?.items.find((c) => c.id === Number(cid))?.name ?? `#${cid}`;
      point[`${name} req/s`] = Math.round(r.rps * 10) / 10;
      point[`${name} err/s`] = Math.round(r.eps * 10) / 10;
    }
    setHistory((h) => [...h.slice(-59), point]);
  }, [proxies.data, clusters.data]);

  const items = proxies.data?.items ?? [];
  const online = items.filter((p) => p.status === 'online').length;
  const stale = items.filter((p) => p.status === 'stale').length;
  const expiring = (certs.data?.items ?? []).filter((c) => (daysUntil(c.not_after) ?? 999) < 30);
  const series = Object.keys(history[history.length - 1] ?? {}).filter((k) => k !== 't');

  return (
    <Box>
      <Typography variant="h5" component="h1" sx={{ mb: 2 }}>
        Dashboard
      </Typography>
      <Grid container spacing={2} sx={{ mb: 2 }}>
        <Grid size={{ xs: 6, md: 3 }}>
          <Stat label="Proxies online" value={proxies.error ? '–' : online} tone="good" />
        </Grid>
        <Grid size={{ xs: 6, md: 3 }}>
          <Stat label="Proxies stale" value={proxies.error ? '–' : stale} tone={stale ? 'warn' : undefined} />
        </Grid>
        <Grid size={{ xs: 6, md: 3 }}>
          <Stat label="Clusters" value={clusters.data?.total ?? '–'} />
        </Grid>
        <Grid size={{ xs: 6, md: 3 }}>
          <Stat label="Services" value={services.data?.total ?? '–'} />
        </Grid>
      </Grid>
      {expiring.length > 0 && (
        <Stack spacing={1} sx={{ mb: 2 }}>
          {expiring.map((c) => {
            const d = daysUntil(c.not_after) ?? 0;
            return (
              <Alert key={c.id} severity={d < 0 ? 'error' : 'warning'}>
                Certificate {c.name} {d < 0 ? `expired ${-d} days ago` : `expires in ${d} days`} ({c.not_after}).
              </Alert>
            );
          })}
        </Stack>
      )}
      <Paper sx={{ p: 2, mb: 2 }}>
        <Typography variant="h6" component="h2">
          Requests and errors per cluster (per second, from proxy heartbeats)
        </Typography>
        {series.length === 0 ? (
          <Typography color="text.secondary">No proxy counters yet.</Typography>
        ) : (
          <Box sx={{ height: 260 }}>
            <ResponsiveContainer>
              <LineChart data={history}>
                <CartesianGrid stroke="rgba(255,255,255,0.1)" />
                <XAxis dataKey="t" stroke="#C7CBD1" />
                <YAxis stroke="#C7CBD1" />
                <Tooltip contentStyle={{ background: brand.surface }} />
                <Legend />
                {series.map((s, i) => (
                  <Line key={s} dataKey={s} stroke={COLORS[i % COLORS.length]} dot={false} isAnimationActive={false} strokeDasharray={s.endsWith('err/s') ? '4 2' : undefined} />
                ))}
              </LineChart>
            </ResponsiveContainer>
          </Box>
        )}
      </Paper>
      {admin && <RecentAudit />}
    </Box>
  );
}

function RecentAudit() {
  const audit = useList<AuditEntry>('audit', { limit: 8 });
  return (
    <Box>
      <Typography variant="h6" component="h2" sx={{ mb: 1 }}>
        Recent audit events
      </Typography>
      <AuditTable items={audit.data?.items ?? []} />
    </Box>
  );
}
