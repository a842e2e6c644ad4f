// Requests/s and errors/s per cluster from successive proxy counter snapshots (heartbeats).
import type { Proxy } from '../api/types';

export interface Sample {
  t: number; // ms
  requests: number;
  errors: number;
}

export type Rates = Record<number, { rps: number; eps: number }>;

// Updates `prev` (per proxy id) and returns per-cluster rates over the interval since each proxy's
// previous snapshot. A counter that went down (proxy restarted) counts from zero.
export function clusterRates(proxies: readonly Proxy[], prev: Map<number, Sample>, now: number): Rates {
  const out: Rates = {};
  for (const p of proxies) {
    const cur: Sample = { t: now, requests: p.counters?.requests ?? 0, errors: p.counters?.errors ?? 0 };
    const before = prev.get(p.id);
    prev.set(p.id, cur);
    const slot = (out[p.cluster_id] ??= { rps: 0, eps: 0 });
    if (!before || cur.t <= before.t) continue;
    const dt = (cur.t - before.t) / 1000;
    const dr = cur.requests >= before.requests ? cur.requests - before.requests : cur.requests;
    const de = cur.errors >= before.errors ? cur.errors - before.errors : cur.errors;
    slot.rps += dr / dt;
    slot.eps += de / dt;
  }
  return out;
}
