// React bindings. React is a peer dependency of this entry only; the core never imports it.
import { useEffect, useMemo, useRef, useSyncExternalStore } from 'react';
import { RealtimeClient } from './client.js';
import type { ConnectionState, RealtimeEvents, RealtimeMessage, RealtimeOptions } from './types.js';

const noop = () => {};

/** The client's state, re-rendering on every change. */
export function useConnectionState(client: RealtimeClient | null | undefined): ConnectionState {
  return useSyncExternalStore(
    (changed) => (client ? client.on('state', changed) : noop),
    () => client?.state ?? 'disconnected',
    () => 'disconnected',
  );
}

/**
 * A client for the component's life: created when `url`, `websocketUrl`, `sseUrl` or
 * `workspaceId` change, connected on mount, disconnected on unmount. `token` and `getToken` are
 * read from the latest render whenever a token is needed, so a refreshed token prop is picked up
 * at the next reconnect without a new client.
 */
export function useRealtime(options: RealtimeOptions): { client: RealtimeClient; state: ConnectionState } {
  const latest = useRef(options);
  latest.current = options;
  const { url, websocketUrl, sseUrl, workspaceId } = options;
  // biome-ignore lint/correctness/useExhaustiveDependencies: the rest of the options is read through `latest`
  const client = useMemo(
    () =>
      new RealtimeClient({
        ...latest.current,
        getToken: () => {
          const o = latest.current;
          return o.getToken ? o.getToken() : o.token;
        },
      }),
    [url, websocketUrl, sseUrl, workspaceId],
  );
  useEffect(() => {
    client.connect();
    return () => client.disconnect();
  }, [client]);
  return { client, state: useConnectionState(client) };
}

/** Calls `handler` for every message of `type` (or `state`, `reload`, `*`) while mounted; the latest handler is used without re-subscribing. */
export function useRealtimeEvent<K extends keyof RealtimeEvents>(
  client: RealtimeClient | null | undefined,
  type: K,
  handler: (value: RealtimeEvents[K]) => void,
): void;
export function useRealtimeEvent<M = RealtimeMessage>(
  client: RealtimeClient | null | undefined,
  type: string,
  handler: (message: M) => void,
): void;
export function useRealtimeEvent(
  client: RealtimeClient | null | undefined,
  type: string,
  handler: (value: unknown) => void,
): void {
  const latest = useRef(handler);
  latest.current = handler;
  useEffect(() => client?.on(type, (v: unknown) => latest.current(v)), [client, type]);
}

export { RealtimeClient };
