import type {
  CloseInfo,
  ConnectionState,
  PresenceResult,
  PublishOptions,
  PublishResult,
  RealtimeError,
  RealtimeEvents,
  RealtimeMessage,
  RealtimeOptions,
  StateEvent,
  TransportName,
} from './types.js';

type Fn = (value: unknown) => void;
type Timer = ReturnType<typeof setTimeout>;

/** One WebSocket or EventSource, identified by object identity so late callbacks of a replaced one are ignored. */
interface Conn {
  k: TransportName;
  /** The socket opened (WebSocket `open`, EventSource `open`). */
  o?: boolean;
  /** Rooms and filter this connection's URL carried. */
  key: string;
  send(text: string): void;
  close(): void;
}

/** A request waiting for its answer. `r`: the reply type of an in-order request; `t`: the timer of an id request. */
interface Pending {
  r?: string;
  t?: Timer;
  ok: Fn;
  ko: (e: RealtimeError) => void;
}

const fail = (code: string, message = code): RealtimeError => Object.assign(new Error(message), { code });

/** True when `token` is a JWT whose `exp` has passed: reconnecting with it would only be refused. */
const expired = (token: string): boolean => {
  try {
    const b = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(b)).exp * 1000 < Date.now();
  } catch {
    return false;
  }
};

/** Replies the server sends in the order of the requests, without an id. */
const IN_ORDER = /^(pong|joined_room|left_room|subscribed|unsubscribed|presence|error)$/;

type WindowLike = {
  addEventListener?: (type: string, f: () => void) => void;
  removeEventListener?: (type: string, f: () => void) => void;
  document?: {
    visibilityState?: string;
    addEventListener?: (type: string, f: () => void) => void;
    removeEventListener?: (type: string, f: () => void) => void;
  };
  location?: { origin: string };
};

export class RealtimeClient {
  state: ConnectionState = 'disconnected';
  /** The transport of the current (or last) connection. */
  transport: TransportName | null = null;
  /** The latest resume position; every (re)connect sends it as `since`. */
  cursor: string | undefined;
  /** Why the last connection closed (code and reason); null once a session is connected again. */
  lastError: CloseInfo | null = null;
  /** Rooms joined: sent as `rooms=` on every connect. Change it with joinRoom/leaveRoom. */
  readonly rooms: Set<string>;
  /** The event type filter: sent as `event_types=` on every connect. Change it with subscribe/unsubscribe. */
  readonly eventTypes: Set<string>;
  /** The token in use; refreshed through getToken. Set it before connect() to change it. */
  token: string | undefined;

  private o: RealtimeOptions &
    Required<
      Pick<
        RealtimeOptions,
        | 'minReconnectDelay'
        | 'maxReconnectDelay'
        | 'pingInterval'
        | 'pongTimeout'
        | 'rpcTimeout'
        | 'websocketRetryInterval'
        | 'transports'
      >
    >;
  private L = new Map<string, Set<Fn>>();
  /** The current connection, and a WebSocket tried in the background while on SSE. */
  private c?: Conn;
  private p?: Conn;
  private kind: TransportName;
  /** The current connection got `connected`. */
  private live = false;
  /** connect() was called and disconnect() was not. */
  private want = false;
  /** Bumped by connect()/disconnect() and final closes, so async work started before is dropped. */
  private gen = 0;
  private attempt = 0;
  /** WebSocket dials in a row that never opened, and whether one ever got `connected`: decide the SSE fallback. */
  private wsFails = 0;
  private wsOk = false;
  /** Minimum reconnect delay after a 4029 (the same token is refused at the upgrade for a while). */
  private hold = 0;
  private seq = 0;
  private ids = new Map<unknown, Pending>();
  private fifo: Pending[] = [];
  private seen = new Set<string>();
  /** Undo functions of room/filter changes that no server has confirmed yet. */
  private undos: (() => void)[] = [];
  private tr?: Timer;
  private tping?: Timer;
  private tdead?: Timer;
  private tprobe?: Timer;

  constructor(options: RealtimeOptions = {}) {
    this.o = {
      transports: ['websocket', 'sse'],
      minReconnectDelay: 1000,
      maxReconnectDelay: 30000,
      pingInterval: 30000,
      pongTimeout: 10000,
      rpcTimeout: 10000,
      websocketRetryInterval: 60000,
      // Read here, not at import: tests and polyfills may install them later.
      WebSocket: globalThis.WebSocket,
      EventSource: globalThis.EventSource,
      ...options,
    };
    this.token = options.token;
    this.cursor = options.cursor;
    this.rooms = new Set(options.rooms);
    this.eventTypes = new Set(options.eventTypes);
    this.kind = this.o.transports[0];
  }

  // ---- listeners -------------------------------------------------------------------------

  /** Listens to messages of a `type` (task updates also by their `event`), `*` for all, or `state` / `reload`. Returns the unsubscribe function. */
  on<K extends keyof RealtimeEvents>(type: K, cb: (value: RealtimeEvents[K]) => void): () => void;
  on<M = RealtimeMessage>(type: string, cb: (message: M) => void): () => void;
  on(type: string, cb: Fn): () => void {
    const s = this.L.get(type) || new Set();
    this.L.set(type, s.add(cb));
    return () => this.off(type, cb);
  }

  /** Removes one listener, or every listener of the type. */
  off(type: string, cb?: (value: never) => void): void {
    cb ? this.L.get(type)?.delete(cb as Fn) : this.L.delete(type);
  }

  private emit(type: string, value: unknown): void {
    for (const f of [...(this.L.get(type) || [])]) {
      try {
        f(value);
      } catch (e) {
        // A throwing listener must not break the connection or the other listeners.
        console.error(e);
      }
    }
  }

  private set(e: StateEvent): void {
    this.state = e.state;
    this.emit('state', e);
  }

  // ---- lifecycle ---------------------------------------------------------------------------

  connect(): void {
    if (this.want) return;
    this.want = true;
    this.gen++;
    this.attempt = this.wsFails = this.hold = 0;
    this.kind = this.o.transports[0];
    this.listen('addEventListener');
    this.open();
  }

  disconnect(): void {
    if (this.want) this.halt(1000, 'client');
  }

  /** Stops for good: after disconnect(), or a close that the same request would get again. */
  private halt(code: number, reason: string): void {
    this.want = false;
    this.gen++;
    this.drop();
    this.listen('removeEventListener');
    this.set({ state: 'disconnected', code, reason });
  }

  private listen(method: 'addEventListener' | 'removeEventListener'): void {
    const g = globalThis as WindowLike;
    g[method]?.('online', this.wake);
    g.document?.[method]?.('visibilitychange', this.wake);
  }

  /** Back online, or the tab is visible again: do not sit out the backoff. */
  private wake = (): void => {
    if (this.tr && (globalThis as WindowLike).document?.visibilityState !== 'hidden') {
      clearTimeout(this.tr);
      this.open();
    }
  };

  private async open(): Promise<void> {
    this.tr = undefined;
    const o = this.o;
    const g = this.gen;
    this.set({ state: 'connecting', transport: this.kind, attempt: this.attempt });
    if (o.getToken && (!this.token || expired(this.token))) {
      const t = await this.fresh();
      if (g !== this.gen) return;
      if (t) this.token = t;
    }
    this.transport = this.kind;
    this.c = this.dial(this.kind);
    // A dial that gets no `connected` in time counts as failed, like a socket that never opened.
    this.tdead = setTimeout(this.dead, o.pongTimeout);
  }

  /** The current token source's answer, if it gives one that differs from the token in use. */
  private async fresh(): Promise<string | undefined> {
    try {
      const t = await this.o.getToken?.();
      return t && t !== this.token ? t : undefined;
    } catch (e) {
      this.emit('error', { type: 'error', code: 'token', message: String(e) });
    }
  }

  private key(): string {
    return `${[...this.rooms]}|${[...this.eventTypes]}`;
  }

  private url(k: TransportName): string {
    const o = this.o;
    const base = (o.url ?? (globalThis as WindowLike).location?.origin ?? '').replace(/\/+$/, '');
    const u =
      k === 'sse'
        ? o.sseUrl || `${base.replace(/^ws/, 'http')}/events`
        : o.websocketUrl || `${base.replace(/^http/, 'ws')}/ws`;
    const q = new URLSearchParams();
    if (this.token) q.set('token', this.token);
    if (o.workspaceId) q.set('workspace_id', o.workspaceId);
    // Always `since`, even empty: the server then sends heartbeats with positions.
    q.set('since', this.cursor || '');
    if (this.rooms.size) q.set('rooms', [...this.rooms].join(','));
    if (this.eventTypes.size) q.set('event_types', [...this.eventTypes].join(','));
    return `${u}${u.includes('?') ? '&' : '?'}${q}`;
  }

  private dial(k: TransportName): Conn {
    const o = this.o;
    const x: Conn = { k, key: this.key(), send() {}, close() {} };
    const msg = (data: unknown) => typeof data === 'string' && this.msg(x, data);
    const end = (code: number, reason: string) => this.end(x, code, reason);
    try {
      const u = this.url(k);
      if (k === 'sse') {
        // biome-ignore lint/style/noNonNullAssertion: a missing EventSource throws, which is a failed dial
        const es = new o.EventSource!(u);
        es.onopen = () => {
          x.o = true;
        };
        es.onmessage = (e) => msg(e.data);
        // EventSource would reconnect by itself (and give up on a 401); our own backoff decides instead.
        es.onerror = () => {
          es.close();
          if (x.o) return end(1006, 'sse error');
          // It never opened, and EventSource hides why: ask the same URL, so that a refusal
          // (401, 403, 400, 429) ends like the WebSocket close code it stands for.
          const a = new AbortController();
          fetch(u, { signal: a.signal })
            .then(async (r) => {
              const code = ({ 401: 4001, 403: 4003, 400: 4003, 429: 4029 } as Record<number, number>)[r.status];
              const body = code && (await r.json().catch(() => 0));
              a.abort();
              end(code || 1006, body?.reason || body?.error || 'sse error');
            })
            .catch(() => end(1006, 'sse error'));
        };
        x.close = () => {
          es.onmessage = es.onerror = null;
          es.close();
        };
      } else {
        // biome-ignore lint/style/noNonNullAssertion: a missing WebSocket throws, which is a failed dial
        const ws = new o.WebSocket!(u);
        ws.onopen = () => {
          x.o = true;
        };
        ws.onmessage = (e) => msg(e.data);
        ws.onclose = (e) => end(e.code, e.reason);
        x.send = (s) => ws.send(s);
        x.close = () => {
          ws.onclose = ws.onmessage = null;
          ws.close(1000);
        };
      }
    } catch (e) {
      // A bad URL or no EventSource: a failed attempt like any other.
      setTimeout(() => end(1006, String(e)));
    }
    return x;
  }

  /** No message within pongTimeout after a ping or a dial: the connection is dead. */
  private dead = (): void => {
    if (this.c) this.end(this.c, 4000, 'timeout');
  };

  /** Forgets the current connection: closes it, stops its timers, settles what waited on it. */
  private drop(): void {
    const x = this.c;
    this.c = undefined;
    this.live = false;
    x?.close();
    this.p?.close();
    this.p = undefined;
    clearTimeout(this.tr);
    clearInterval(this.tping);
    clearTimeout(this.tdead);
    clearInterval(this.tprobe);
    this.tr = this.tdead = undefined;
    const e = fail('disconnected');
    for (const p of this.ids.values()) {
      clearTimeout(p.t);
      p.ko(e);
    }
    this.ids.clear();
    for (const p of this.fifo.splice(0)) p.ko(e);
  }

  /** Closes the current connection and dials again at once (new rooms or filter on SSE). */
  private reopen(): void {
    this.drop();
    this.open();
  }

  private end(x: Conn, code: number, reason: string): void {
    if (x === this.p) {
      // The background WebSocket failed: stay on SSE, the interval tries again.
      this.p = undefined;
      return;
    }
    if (x !== this.c) return;
    const was = this.live;
    this.drop();
    if (x.k === 'websocket' && !x.o && !this.hold) this.wsFails++;
    if (
      x.k === 'websocket' &&
      this.wsFails > 1 &&
      !this.wsOk &&
      this.o.transports.includes('sse') &&
      this.o.EventSource
    )
      this.kind = 'sse';
    this.lastError = { code, reason };
    this.retry(code, reason, was);
  }

  private backoff(): number {
    const o = this.o;
    return Math.random() * Math.min(o.maxReconnectDelay, o.minReconnectDelay * 2 ** this.attempt++);
  }

  /** What a close code means for the next attempt (README "Close codes"). */
  private async retry(code: number, reason: string, was: boolean): Promise<void> {
    const g = this.gen;
    let fresh = false;
    if (code === 4001 || code === 4002 || code === 4029) {
      // Never again with a refused token. The state event follows once getToken has answered.
      this.state = 'reconnecting';
      const t = await this.fresh();
      if (g !== this.gen) return;
      if (t) {
        this.token = t;
        fresh = true;
        this.hold = 0;
      }
    }
    // A refused room or filter that no server has confirmed yet (joined while disconnected, or over
    // SSE): undo those changes and try again without them, rather than stop for good.
    const undone = code === 4003 && this.undos.length > 0;
    if (undone) {
      for (const f of this.undos.splice(0).reverse()) f();
      this.emit('error', { type: 'error', code: 'forbidden', message: reason });
    }
    if ((code === 4003 && !undone) || ((code === 4001 || code === 4002) && !fresh)) return this.halt(code, reason);
    if (code === 1002 || code === 1003 || code === 1007 || code === 1009)
      this.emit('error', { type: 'error', code: 'protocol_violation', message: reason, closeCode: code });
    if (code === 4029 && !fresh) this.hold = 30000;
    let d: number;
    if (!this.attempt && (fresh || undone || (code === 1001 && was))) {
      // A new token, fewer rooms, or a replica that drains: back at once (a drain spreads its herd over a second).
      this.attempt++;
      d = code === 1001 ? Math.random() * 1000 : 0;
    } else {
      d = this.backoff();
      const n = code === 1013 && /retry in ([\d.]+)/.exec(reason);
      if (n) d += +n[1] * 1000;
    }
    d = Math.max(d, this.hold);
    this.set({ state: 'reconnecting', delay: d, attempt: this.attempt, code, reason });
    this.tr = setTimeout(() => this.open(), d);
  }

  // ---- messages ----------------------------------------------------------------------------

  private msg(x: Conn, text: string): void {
    let m: RealtimeMessage;
    try {
      m = JSON.parse(text);
    } catch {
      return;
    }
    if (!m || typeof m.type !== 'string') return;
    const t = m.type;
    if (x === this.p) {
      // The background WebSocket is up: it replaces the SSE stream (duplicates at the seam are dropped by id).
      if (t !== 'connected') return;
      const old = this.c;
      this.c = x;
      this.p = undefined;
      old?.close();
      clearInterval(this.tprobe);
      this.kind = this.transport = 'websocket';
    } else if (x !== this.c) return;
    clearTimeout(this.tdead);
    this.tdead = undefined;
    if (t === 'connected' && x.key !== this.key()) {
      // Rooms or filter changed while dialing: the URL did not carry them. Dial again from the
      // same cursor (not this answer's), so a replay or a `recovered: false` is not lost.
      this.reopen();
      return;
    }
    if (typeof m.cursor === 'string') this.cursor = m.cursor;

    if (t === 'connected') {
      this.live = true;
      this.attempt = this.hold = 0;
      this.lastError = null;
      this.undos = [];
      if (x.k === 'websocket') {
        this.wsOk = true;
        this.wsFails = 0;
        this.tping = setInterval(this.ping, this.o.pingInterval);
      } else if (this.o.transports[0] === 'websocket') {
        this.tprobe = setInterval(() => {
          this.p?.close();
          this.p = this.dial('websocket');
        }, this.o.websocketRetryInterval);
      }
      this.set({
        state: 'connected',
        transport: x.k,
        recovered: m.recovered as boolean | undefined,
        replayed: m.replayed as number | undefined,
      });
    } else if (/^(rpc_result|rpc_error|published)$/.test(t) || (t === 'error' && m.id != null)) {
      const p = this.ids.get(m.id);
      if (p) {
        this.ids.delete(m.id);
        clearTimeout(p.t);
        const e = ((t === 'rpc_error' && m.error) || m) as { code: string; message: string };
        t === 'rpc_result' || t === 'published' ? p.ok(m.data) : p.ko(fail(e.code, e.message));
      }
    } else if (IN_ORDER.test(t)) {
      // Each answered at once and in order; an error names no request, so it answers the oldest.
      const i = t === 'error' ? 0 : this.fifo.findIndex((p) => p.r === t);
      const p = i < 0 ? undefined : this.fifo.splice(i, 1)[0];
      if (p) t === 'error' ? p.ko(fail(m.code as string, m.message as string)) : p.ok(m);
    } else if (typeof m.id === 'string' && !m.snapshot) {
      // Drop what a replay repeats at the seam; a bounded memory of the latest ids is enough there.
      if (this.seen.has(m.id)) return;
      this.seen.add(m.id);
      if (this.seen.size > 1000) this.seen.delete(this.seen.values().next().value as string);
    }

    this.emit(t, m);
    if (t === 'task_update' && typeof m.event === 'string') this.emit(m.event, m);
    this.emit('*', m);
    if (t === 'connected' && m.recovered === false) this.emit('reload', { reason: m.reason });
  }

  private ping = (): void => {
    if (!this.send({ type: 'ping' })) return;
    this.fifo.push({ r: 'pong', ok() {}, ko() {} });
    this.tdead ||= setTimeout(this.dead, this.o.pongTimeout);
  };

  // ---- requests ----------------------------------------------------------------------------

  /** Sends a raw message (legacy request types) when connected over WebSocket. Its answer comes to the listeners. */
  send(message: object): boolean {
    const ok = this.live && this.c?.k === 'websocket';
    if (ok) this.c?.send(JSON.stringify(message));
    return !!ok;
  }

  private can(): RealtimeError | undefined {
    if (!this.live) return fail('disconnected');
    if (this.c?.k === 'sse') return fail('unsupported_transport', 'not over SSE');
  }

  /** An in-order request: answered by the next reply of type `r` (or an error). */
  private ask<T>(m: object, r: string): Promise<T> {
    return new Promise((ok, ko) => {
      const e = this.can();
      if (e) return ko(e);
      this.fifo.push({ r, ok: ok as Fn, ko });
      this.send(m);
    });
  }

  /** A request answered later, by `id`. */
  private call<T>(m: object, timeout = this.o.rpcTimeout): Promise<T> {
    return new Promise((ok, ko) => {
      const e = this.can();
      if (e) return ko(e);
      const id = ++this.seq;
      const t = setTimeout(() => {
        this.ids.delete(id);
        ko(fail('timeout'));
      }, timeout);
      this.ids.set(id, { t, ok: ok as Fn, ko });
      this.send({ ...m, id });
    });
  }

  /**
   * Room and filter changes: the local sets are the truth, sent with every connect. Connected over
   * WebSocket, the server is asked now (an error undoes the change); over SSE the stream is
   * reopened; otherwise the next connect carries it. A close before the answer keeps the change.
   * A change no server has confirmed is undone when the next connect is refused with 4003.
   */
  private change(m: object, r: string, undo?: () => void, done?: (m: RealtimeMessage) => void): Promise<void> {
    if (!this.live || this.c?.k === 'sse') {
      if (undo) this.undos.push(undo);
      if (this.live) this.reopen();
      return Promise.resolve();
    }
    return this.ask<RealtimeMessage>(m, r).then(done, (e: RealtimeError) => {
      if (e.code === 'disconnected') return;
      undo?.();
      throw e;
    });
  }

  private filter(types: unknown): void {
    this.eventTypes.clear();
    for (const t of types as string[]) this.eventTypes.add(t);
  }

  joinRoom(room: string): Promise<void> {
    const had = this.rooms.has(room);
    this.rooms.add(room);
    return this.change({ type: 'join_room', room }, 'joined_room', () => had || this.rooms.delete(room));
  }

  leaveRoom(room: string): Promise<void> {
    this.rooms.delete(room);
    return this.change({ type: 'leave_room', room }, 'left_room');
  }

  subscribe(types: string[]): Promise<void> {
    const before = [...this.eventTypes];
    for (const t of types) this.eventTypes.add(t);
    return this.change(
      { type: 'subscribe', event_types: types },
      'subscribed',
      () => this.filter(before),
      (m) => this.filter((m.data as { event_types: string[] }).event_types),
    );
  }

  /** Without types: clears the filter (every type again). */
  unsubscribe(types?: string[]): Promise<void> {
    if (types) for (const t of types) this.eventTypes.delete(t);
    else this.eventTypes.clear();
    return this.change({ type: 'unsubscribe', event_types: types }, 'unsubscribed', undefined, (m) =>
      this.filter((m.data as { event_types: string[] }).event_types),
    );
  }

  /** Who is online in the workspace, or in `room` (one of this session's rooms). Rejects `unavailable` when presence is off. */
  presence(room?: string): Promise<PresenceResult> {
    return this.ask<RealtimeMessage>({ type: 'presence', room }, 'presence').then((m) => m.data as PresenceResult);
  }

  /** Calls a backend method through the gateway; resolves with its answer, rejects with its error code or `timeout`. */
  rpc<T = unknown>(method: string, data?: unknown, options?: { timeout?: number }): Promise<T> {
    return this.call<T>({ type: 'rpc', method, data }, options?.timeout);
  }

  /** Publishes to a room's members; resolves once the broker acknowledged it. */
  publish(room: string, data: unknown, options: PublishOptions = {}): Promise<PublishResult> {
    return this.call<{ room: string; event_id: string }>(
      { type: 'publish', room, data, event_type: options.eventType, ephemeral: options.ephemeral || undefined },
      options.timeout,
    ).then((d) => ({ eventId: d.event_id, room: d.room }));
  }
}
