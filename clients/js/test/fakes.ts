// Test doubles: a WebSocket and an EventSource driven by the test, and a few helpers.

import type { RealtimeMessage, RealtimeOptions, StateEvent } from '../src/index.js';
import { RealtimeClient } from '../src/index.js';

type Handler = ((event: { data?: string; code?: number; reason?: string }) => void) | null;

export class FakeWebSocket {
  readyState = 0;
  sent: string[] = [];
  /** The code the client closed with, when it did. */
  closedWith?: number;
  onopen: Handler = null;
  onmessage: Handler = null;
  onclose: Handler = null;
  onerror: Handler = null;
  constructor(public url: string) {}
  send(text: string): void {
    if (this.readyState !== 1) throw new Error('InvalidStateError: not open');
    this.sent.push(text);
  }
  close(code?: number): void {
    this.closedWith = code ?? 1005;
    this.readyState = 3;
  }
  // --- driven by the test ---
  open(): void {
    this.readyState = 1;
    this.onopen?.({});
  }
  receive(message: object): void {
    this.onmessage?.({ data: JSON.stringify(message) });
  }
  /** The server closes (or the connection fails: 1006 without open). */
  serverClose(code: number, reason = ''): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  messages(): RealtimeMessage[] {
    return this.sent.map((s) => JSON.parse(s));
  }
}

export class FakeEventSource {
  readyState = 0;
  closed = false;
  onopen: Handler = null;
  onmessage: Handler = null;
  onerror: Handler = null;
  constructor(public url: string) {}
  close(): void {
    this.closed = true;
    this.readyState = 2;
  }
  open(): void {
    this.readyState = 1;
    this.onopen?.({});
  }
  receive(message: object): void {
    this.onmessage?.({ data: JSON.stringify(message) });
  }
  error(): void {
    this.onerror?.({});
  }
}

export function connectedMessage(extra: object = {}): object {
  return {
    type: 'connected',
    event: 'connected',
    connection_id: 'c-1',
    user_id: 'u-1',
    workspace_id: null,
    server_time: '2026-01-01T00:00:00Z',
    timestamp: '2026-01-01T00:00:00Z',
    cursor: 'cur-0',
    ...extra,
  };
}

export function setup(options: RealtimeOptions = {}) {
  const sockets: FakeWebSocket[] = [];
  const sources: FakeEventSource[] = [];
  class WS extends FakeWebSocket {
    constructor(url: string) {
      super(url);
      sockets.push(this);
    }
  }
  class ES extends FakeEventSource {
    constructor(url: string) {
      super(url);
      sources.push(this);
    }
  }
  const client = new RealtimeClient({
    url: 'http://gw.test',
    token: 't0',
    WebSocket: WS as unknown as typeof WebSocket,
    EventSource: ES as unknown as typeof EventSource,
    ...options,
  });
  const states: StateEvent[] = [];
  client.on('state', (e) => states.push(e));
  const last = (): FakeWebSocket => {
    const s = sockets.at(-1);
    if (!s) throw new Error('no socket was opened');
    return s;
  };
  /** Opens the latest socket and answers it with `connected`. */
  const up = (extra: object = {}): FakeWebSocket => {
    const s = last();
    s.open();
    s.receive(connectedMessage(extra));
    return s;
  };
  const reconnecting = () =>
    states.filter((e) => e.state === 'reconnecting') as Extract<StateEvent, { state: 'reconnecting' }>[];
  return { client, sockets, sources, states, last, up, reconnecting, WS, ES };
}

/** Lets pending promise callbacks run (setImmediate is not faked). */
export const flush = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

export function query(url: string): URLSearchParams {
  return new URL(url).searchParams;
}
