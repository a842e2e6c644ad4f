// Connection state for the network banner: the last request failed to reach the manager, or the
// live-event socket is down.
import { create } from 'zustand';

interface NetState {
  apiDown: boolean;
  live: 'connecting' | 'live' | 'down';
  setApiDown: (v: boolean) => void;
  setLive: (v: NetState['live']) => void;
}

export const useNet = create<NetState>((set) => ({
  apiDown: false,
  live: 'connecting',
  setApiDown: (v) => set((s) => (s.apiDown === v ? s : { apiDown: v })),
  setLive: (v) => set((s) => (s.live === v ? s : { live: v })),
}));
