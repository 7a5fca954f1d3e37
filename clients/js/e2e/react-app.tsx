// The browser tests' React page (e2e/react.html, bundled by `npm run build:e2e`): the package's
// React entry against the real gateway. The client connects while <Live> is mounted; #unmount
// unmounts it, which must disconnect the client.
import { StrictMode, useEffect, useState } from 'react';
import { createRoot } from 'react-dom/client';
import type { RealtimeClient, RealtimeMessage } from '../src/index.js';
import { useConnectionState, useRealtime, useRealtimeEvent } from '../src/react.js';

declare global {
  interface Window {
    /** The client of the mounted (or last mounted) <Live>, for the tests to inspect. */
    reactClient?: RealtimeClient;
    /** Every state `useRealtime().state` rendered, in order. */
    reactStates: string[];
  }
}

const user = new URLSearchParams(location.search).get('user') || 'react';
const fresh = async (): Promise<{ token: string; gatewayUrl: string }> =>
  (await fetch(`/token?user=${encodeURIComponent(user)}`)).json();

function Live({ url, token }: { url: string; token: string }) {
  const { client, state } = useRealtime({ url, token, getToken: async () => (await fresh()).token });
  const state2 = useConnectionState(client);
  const [events, setEvents] = useState<unknown[]>([]);
  useRealtimeEvent<RealtimeMessage>(client, 'react.test', (m) => {
    setEvents((list) => [...list, (m.data as { n?: unknown } | undefined)?.n]);
  });
  useEffect(() => {
    window.reactClient = client;
  }, [client]);
  useEffect(() => {
    window.reactStates.push(state);
  }, [state]);
  return (
    <section>
      <p>
        useRealtime: <span id="react-state">{state}</span>
      </p>
      <p>
        useConnectionState: <span id="react-state-2">{state2}</span>
      </p>
      <ul id="react-events">
        {events.map((n, i) => (
          // biome-ignore lint/suspicious/noArrayIndexKey: an append-only list
          <li key={i}>{String(n)}</li>
        ))}
      </ul>
    </section>
  );
}

function App({ url, token }: { url: string; token: string }) {
  const [mounted, setMounted] = useState(true);
  return mounted ? (
    <>
      <Live url={url} token={token} />
      <button id="unmount" type="button" onClick={() => setMounted(false)}>
        unmount
      </button>
    </>
  ) : (
    <p id="unmounted">unmounted</p>
  );
}

window.reactStates = [];
fresh().then(({ token, gatewayUrl }) => {
  const root = document.getElementById('root');
  if (!root) throw new Error('no #root');
  createRoot(root).render(
    <StrictMode>
      <App url={gatewayUrl} token={token} />
    </StrictMode>,
  );
});
