// Keeps one WebSocket to /api/v1/events open while logged in (ticket from an authenticated POST,
// since browsers cannot send Authorization on a WebSocket), applies events to the query cache, and
// reconnects with back-off; after a reconnect every query is refetched (events may have been missed).
import { useEffect } from 'react';
import { useQueryClient } from '@tanstack/react-query';
import { post } from '../api/client';
import type { EventTicket } from '../api/types';
import { useAuth } from '../store/auth';
import { useNet } from '../store/net';
import { applyEvent, type WireEvent } from './apply';

export function useLiveEvents(): void {
  const qc = useQueryClient();
  const loggedIn = useAuth((s) => s.tokens !== null);
  useEffect(() => {
    if (!loggedIn) return;
    let ws: WebSocket | null = null;
    let stopped = false;
    let attempt = 0;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const setLive = useNet.getState().setLive;

    const connect = async () => {
      if (stopped) return;
      setLive(attempt === 0 ? 'connecting' : 'down');
      let ticket: string;
      try {
        ticket = (await post<EventTicket>('/events/ticket')).ticket;
      } catch {
        retry();
        return;
      }
      if (stopped) return;
      const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
      ws = new WebSocket(`${proto}//${location.host}/api/v1/events?ticket=${encodeURIComponent(ticket)}`);
      ws.onmessage = (m) => {
        let ev: WireEvent;
        try {
          ev = JSON.parse(String(m.data)) as WireEvent;
        } catch {
          return;
        }
        if (ev.type === 'hello') {
          if (attempt > 0) void qc.invalidateQueries();
          attempt = 0;
          setLive('live');
          useNet.getState().setApiDown(false);
          return;
        }
        applyEvent(qc, ev);
      };
      ws.onclose = () => {
        ws = null;
        retry();
      };
    };
    const retry = () => {
      if (stopped) return;
      attempt += 1;
      setLive('down');
      const delay = Math.min(15000, 500 * 2 ** Math.min(attempt, 5)) * (0.5 + Math.random() / 2);
      timer = setTimeout(() => void connect(), delay);
    };
    void connect();
    return () => {
      stopped = true;
      if (timer) clearTimeout(timer);
      ws?.close();
    };
  }, [loggedIn, qc]);
}
