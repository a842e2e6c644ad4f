import { clusterRates, type Sample } from './rates';
import type { Proxy } from '../api/types';

const proxy = (id: number, cluster_id: number, requests: number, errors: number): Proxy => ({
  id, cluster_id, name: `p${id}`, kind: 'ingress', status: 'online', counters: { requests, errors },
});

describe('requests/s per cluster from heartbeat counters', () => {
  it('sums proxy rates per cluster and survives a counter reset', () => {
    const prev = new Map<number, Sample>();
    clusterRates([proxy(1, 1, 100, 0), proxy(2, 1, 50, 0), proxy(3, 2, 0, 0)], prev, 0);
    const r = clusterRates([proxy(1, 1, 300, 10), proxy(2, 1, 150, 0), proxy(3, 2, 20, 2)], prev, 10_000);
    expect(r[1]).toEqual({ rps: 30, eps: 1 });
    expect(r[2]).toEqual({ rps: 2, eps: 0.2 });
    const reset = clusterRates([proxy(1, 1, 40, 0), proxy(2, 1, 150, 0), proxy(3, 2, 20, 2)], prev, 20_000);
    expect(reset[1]?.rps).toBe(4);
  });
});
