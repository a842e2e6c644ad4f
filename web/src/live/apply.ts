// Applies one live event to the TanStack Query cache, so every open page shows it without a reload:
// objects are replaced or removed in the cached lists at once, and the lists are then refetched in
// the background (a created object may or may not match a page's filter).
import type { QueryClient } from '@tanstack/react-query';
import type { List } from '../api/types';

export interface WireEvent {
  type: string;
  resource?: string;
  id?: number;
  action?: string;
  cluster_id?: number | null;
  data?: Record<string, unknown>;
}

type Item = { id: number } & Record<string, unknown>;

export function applyEvent(qc: QueryClient, ev: WireEvent): void {
  switch (ev.type) {
    case 'object':
    case 'proxy':
    case 'heartbeat': {
      const resource = ev.resource ?? (ev.type === 'object' ? '' : 'proxies');
      if (!resource) return;
      const data = ev.data as Item | undefined;
      qc.setQueriesData<List<Item>>({ queryKey: ['list', resource] }, (old) => {
        if (!old) return old;
        if (ev.action === 'deleted') {
          const items = old.items.filter((x) => x.id !== ev.id);
          return { ...old, items, total: old.total - (old.items.length - items.length) };
        }
        if (data && typeof data.id === 'number' && Object.keys(data).length > 1) {
          const i = old.items.findIndex((x) => x.id === data.id);
          if (i >= 0) {
            const items = old.items.slice();
            items[i] = { ...old.items[i], ...data } as Item;
            return { ...old, items };
          }
          if (ev.action === 'created') return { ...old, items: [...old.items, data], total: old.total + 1 };
        }
        return old;
      });
      if (ev.type !== 'heartbeat') void qc.invalidateQueries({ queryKey: ['list', resource] });
      if (ev.type === 'object') void qc.invalidateQueries({ queryKey: ['one', resource, ev.id] });
      return;
    }
    case 'audit':
      void qc.invalidateQueries({ queryKey: ['list', 'audit'] });
      return;
    case 'resync':
      void qc.invalidateQueries();
      return;
    default:
      return;
  }
}
