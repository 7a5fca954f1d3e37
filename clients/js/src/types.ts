// Types only: this module compiles to nothing.

/** `client.state`. `connected` means the server's `connected` message arrived, not just an open socket. */
export type ConnectionState = 'disconnected' | 'connecting' | 'connected' | 'reconnecting';

export type TransportName = 'websocket' | 'sse';

/** Returns a fresh token, or nothing when there is none (the client then stays disconnected after a 4001/4002). */
export type TokenSource = () => Promise<string | null | undefined> | string | null | undefined;

export interface RealtimeOptions {
  /** Base URL of the gateway, e.g. `https://rt.example.com` or `http://localhost:8005`; `/ws` and `/events` are derived from it. Defaults to `location.origin`. */
  url?: string;
  /** Full WebSocket endpoint, overriding the one derived from `url`. */
  websocketUrl?: string;
  /** Full SSE endpoint, overriding the one derived from `url`. */
  sseUrl?: string;
  token?: string;
  /** Called for the first connect when there is no token, when the server refused the token (4001) or it expired (4002, or its `exp` passed), and after 4029. */
  getToken?: TokenSource;
  workspaceId?: string;
  /** A resume position to start from, e.g. `client.cursor` saved in sessionStorage before a page reload. */
  cursor?: string;
  /** Rooms joined from the first connect on. */
  rooms?: string[];
  /** Initial event type filter (empty: every type). */
  eventTypes?: string[];
  /** Transports in the order tried. Default `['websocket', 'sse']`. */
  transports?: TransportName[];
  /** Default 1000 ms. */
  minReconnectDelay?: number;
  /** Default 30000 ms. */
  maxReconnectDelay?: number;
  /** How often a `ping` is sent over WebSocket. Default 30000 ms. */
  pingInterval?: number;
  /** Silence after a ping (or after dialing, before `connected`) that declares the connection dead. Default 10000 ms. */
  pongTimeout?: number;
  /** Default timeout of `rpc()` and `publish()`. Default 10000 ms. */
  rpcTimeout?: number;
  /** While on SSE after a WebSocket fallback, how often a WebSocket is tried again in the background. Default 60000 ms. */
  websocketRetryInterval?: number;
  WebSocket?: typeof WebSocket;
  EventSource?: typeof EventSource;
}

/** Any message the server sends. Fields beyond `type` depend on it; unknown ones may appear. */
export interface RealtimeMessage {
  type: string;
  event?: string;
  id?: string | number;
  cursor?: string;
  data?: unknown;
  [field: string]: unknown;
}

export interface ConnectedMessage extends RealtimeMessage {
  type: 'connected';
  connection_id: string;
  user_id: string;
  workspace_id: string | null;
  server_time: string;
  cursor: string;
  recovered?: boolean;
  replayed?: number;
  reason?: string;
}

export interface TaskUpdateMessage extends RealtimeMessage {
  type: 'task_update';
  event: string;
  task: Record<string, unknown>;
  id: string;
  timestamp: string;
}

export interface ErrorMessage extends RealtimeMessage {
  type: 'error';
  code: string;
  message: string;
  /** Set for the client's own errors (a 1002, 1003, 1007 or 1009 close: a bug in the client). */
  closeCode?: number;
}

export interface CloseInfo {
  code: number;
  reason: string;
}

/** Emitted as `state` on every change of `client.state`. */
export type StateEvent =
  | { state: 'connecting'; transport: TransportName; attempt: number }
  | { state: 'connected'; transport: TransportName; recovered?: boolean; replayed?: number }
  | { state: 'reconnecting'; delay: number; attempt: number; code: number; reason: string }
  | { state: 'disconnected'; code: number; reason: string };

/** `recovered: false` in `connected`: events were missed and cannot be replayed. */
export interface ReloadEvent {
  reason: string;
}

export interface PresenceResult {
  users: string[];
  truncated: boolean;
  workspace_id?: string;
  room?: string;
}

export interface PublishOptions {
  /** The type the room's members get it as; default `message`. */
  eventType?: string;
  /** Live only, never replayed (typing indicators). */
  ephemeral?: boolean;
  timeout?: number;
}

export interface PublishResult {
  eventId: string;
  room: string;
}

/** An `Error` with the protocol's code: `timeout`, `disconnected`, `unsupported_transport`, or the server's (`forbidden`, `unknown_method`, ...). */
export interface RealtimeError extends Error {
  code: string;
}

/** The names `on()` knows the payload of; any other name is a message `type` (or a task update's `event`). */
export interface RealtimeEvents {
  state: StateEvent;
  reload: ReloadEvent;
  connected: ConnectedMessage;
  task_update: TaskUpdateMessage;
  error: ErrorMessage;
  '*': RealtimeMessage;
}
