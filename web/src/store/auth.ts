// Who is logged in (Zustand). Tokens live in sessionStorage: a reload keeps the session, closing the
// tab ends it.
import { create } from 'zustand';
import type { Me } from '../api/types';

interface Tokens {
  access: string;
  refresh: string;
}

interface AuthState {
  tokens: Tokens | null;
  me: Me | null;
  setTokens: (t: Tokens | null) => void;
  setMe: (m: Me | null) => void;
  logout: () => void;
}

const KEY = 'marchproxy.session';

function load(): Tokens | null {
  try {
    const raw = sessionStorage.getItem(KEY);
    return raw ? (JSON.parse(raw) as Tokens) : null;
  } catch {
    return null;
  }
}

export const useAuth = create<AuthState>((set) => ({
  tokens: load(),
  me: null,
  setTokens: (t) => {
    if (t) sessionStorage.setItem(KEY, JSON.stringify(t));
    else sessionStorage.removeItem(KEY);
    set({ tokens: t });
  },
  setMe: (m) => set({ me: m }),
  logout: () => {
    sessionStorage.removeItem(KEY);
    set({ tokens: null, me: null });
  },
}));

// What the UI lets a role do (the server enforces it; this only hides controls).
export type Role = Me['role'];
export function canWrite(role: Role | undefined, what: 'clusters' | 'services' | 'mappings' | 'forwards' | 'routes' | 'certificates' | 'users' | 'audit' | 'proxies'): boolean {
  if (role === 'admin') return true;
  if (role !== 'service-owner') return false;
  return what === 'services' || what === 'mappings' || what === 'forwards' || what === 'clusters';
}
export function canCreate(role: Role | undefined, what: Parameters<typeof canWrite>[1]): boolean {
  if (role === 'admin') return true;
  return role === 'service-owner' && (what === 'services' || what === 'mappings' || what === 'forwards');
}
