import { useList } from './ResourcePage';

export function ClusterName({ id }: { id: number | undefined }) {
  const clusters = useList<{ id: number; name: string }>('clusters', { limit: 1000, sort: 'name' });
  const c = clusters.data?.items.find((x) => x.id === id);
  return <>{c ? c.name : `#${id ?? '?'}`}</>;
}

export function ServiceNames({ ids }: { ids: readonly number[] | undefined }) {
  const services = useList<{ id: number; name: string }>('services', { limit: 1000, sort: 'name' });
  return <>{(ids ?? []).map((id) => services.data?.items.find((s) => s.id === id)?.name ?? `#${id}`).join(', ') || '–'}</>;
}
