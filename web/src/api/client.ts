// The one way the UI talks to the manager: JSON over fetch, bearer token, one refresh on 401,
// problem+json turned into ApiError, network failures into NetworkError (and the banner).
import { useAuth } from '../store/auth';
import { useNet } from '../store/net';
import { ApiError, NetworkError } from './problem';

export const API = '/api/v1';

let refreshing: Promise<boolean> | null = null;

async function refresh(): Promise<boolean> {
  const t = useAuth.getState().tokens;
  if (!t) return false;
  refreshing ??= (async () => {
    try {
      const r = await fetch(`${API}/auth/refresh`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ refresh_token: t.refresh }),
      });
      if (!r.ok) return false;
      const j = (await r.json()) as { access_token: string; refresh_token: string };
      useAuth.getState().setTokens({ access: j.access_token, refresh: j.refresh_token });
      return true;
    } catch {
      return false;
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

export interface RequestOptions {
  method?: string;
  body?: unknown;
  ifMatch?: number;
  auth?: boolean; // default true
}

export async function api<T>(path: string, opts: RequestOptions = {}, retried = false): Promise<T> {
  const headers: Record<string, string> = {};
  const tokens = useAuth.getState().tokens;
  if (opts.auth !== false && tokens) headers.authorization = `Bearer ${tokens.access}`;
  if (opts.body !== undefined) headers['content-type'] = 'application/json';
  if (opts.ifMatch !== undefined) headers['if-match'] = `"${opts.ifMatch}"`;
  let r: Response;
  try {
    r = await fetch(`${API}${path}`, {
      method: opts.method ?? 'GET',
      headers,
      body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
    });
  } catch (e) {
    useNet.getState().setApiDown(true);
    throw new NetworkError(`cannot reach the manager (${e instanceof Error ? e.message : String(e)})`);
  }
  if (r.status >= 502 && r.status <= 504 && !(r.headers.get('content-type') ?? '').includes('json')) {
    useNet.getState().setApiDown(true);
    throw new NetworkError(`the manager is unavailable (HTTP ${r.status})`);
  }
  useNet.getState().setApiDown(false);
  if (r.status === 401 && opts.auth !== false && !retried && tokens) {
    if (await refresh()) return api<T>(path, opts, true);
    useAuth.getState().logout();
  }
  if (r.status === 204 || r.status === 304) return undefined as T;
  const text = await r.text();
  const body: unknown = text ? JSON.parse(text) : undefined;
  if (!r.ok) throw new ApiError(r.status, (body ?? {}) as Record<string, string>);
  return body as T;
}

export const get = <T>(path: string) => api<T>(path);
export const post = <T>(path: string, body?: unknown) => api<T>(path, { method: 'POST', body: body ?? {} });
export const patch = <T>(path: string, body: unknown, ifMatch?: number) =>
  api<T>(path, { method: 'PATCH', body, ifMatch });
export const del = (path: string, ifMatch?: number) => api<void>(path, { method: 'DELETE', ifMatch });
