import { QueryClient } from '@tanstack/react-query';
import { applyEvent } from './apply';

type L = { items: { id: number; name: string }[]; total: number; limit: number; offset: number };

function cacheWith(list: L) {
  const qc = new QueryClient({ defaultOptions: { queries: { staleTime: Infinity } } });
  qc.setQueryData(['list', 'clusters', 'sort=name'], list);
  return qc;
}

describe('live events update the query cache', () => {
  it('replaces an updated object in every cached list of its resource at once', () => {
    const qc = cacheWith({ items: [{ id: 1, name: 'a' }, { id: 2, name: 'b' }], total: 2, limit: 100, offset: 0 });
    applyEvent(qc, { type: 'object', resource: 'clusters', id: 2, action: 'updated', data: { id: 2, name: 'b2' } });
    expect(qc.getQueryData<L>(['list', 'clusters', 'sort=name'])?.items.map((c) => c.name)).toEqual(['a', 'b2']);
    expect(qc.getQueryState(['list', 'clusters', 'sort=name'])?.isInvalidated).toBe(true);
  });
  it('adds created objects and removes deleted ones', () => {
    const qc = cacheWith({ items: [{ id: 1, name: 'a' }], total: 1, limit: 100, offset: 0 });
    applyEvent(qc, { type: 'object', resource: 'clusters', id: 5, action: 'created', data: { id: 5, name: 'new' } });
    expect(qc.getQueryData<L>(['list', 'clusters', 'sort=name'])?.total).toBe(2);
    applyEvent(qc, { type: 'object', resource: 'clusters', id: 1, action: 'deleted', data: { id: 1, name: 'a' } });
    const after = qc.getQueryData<L>(['list', 'clusters', 'sort=name']);
    expect(after?.items.map((c) => c.id)).toEqual([5]);
    expect(after?.total).toBe(1);
  });
  it('leaves other resources alone', () => {
    const qc = cacheWith({ items: [{ id: 1, name: 'a' }], total: 1, limit: 100, offset: 0 });
    applyEvent(qc, { type: 'object', resource: 'services', id: 1, action: 'updated', data: { id: 1, name: 'svc' } });
    expect(qc.getQueryData<L>(['list', 'clusters', 'sort=name'])?.items[0]?.name).toBe('a');
  });
  it('heartbeats update proxy counters without a refetch; resync refetches everything', () => {
    const qc = new QueryClient();
    qc.setQueryData(['list', 'proxies', ''], { items: [{ id: 7, name: 'p', counters: { requests: 1 } }], total: 1, limit: 100, offset: 0 });
    applyEvent(qc, { type: 'heartbeat', resource: 'proxies', id: 7, data: { id: 7, counters: { requests: 50 } } });
    const p = qc.getQueryData<{ items: { counters: { requests: number } }[] }>(['list', 'proxies', '']);
    expect(p?.items[0]?.counters.requests).toBe(50);
    expect(qc.getQueryState(['list', 'proxies', ''])?.isInvalidated).toBe(false);
    applyEvent(qc, { type: 'resync' });
    expect(qc.getQueryState(['list', 'proxies', ''])?.isInvalidated).toBe(true);
  });
});
