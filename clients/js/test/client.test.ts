import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, it, mock } from 'node:test';
import type { RealtimeError, RealtimeMessage } from '../src/index.js';
import { RealtimeClient } from '../src/index.js';
import { connectedMessage, flush, query, setup } from './fakes.js';

beforeEach(() => {
  mock.timers.enable({ apis: ['setTimeout', 'setInterval'] });
});

afterEach(() => {
  mock.timers.reset();
  mock.restoreAll();
});

const tick = (ms: number) => mock.timers.tick(ms);
const random = (value: number) => mock.method(Math, 'random', () => value);

describe('state machine', () => {
  it('is connected only after the server says `connected`, not on socket open', () => {
    const { client, states, last, sockets } = setup();
    assert.equal(client.state, 'disconnected');
    client.connect();
    assert.equal(client.state, 'connecting');
    assert.equal(sockets.length, 1);
    last().open();
    assert.equal(client.state, 'connecting');
    last().receive(connectedMessage());
    assert.equal(client.state, 'connected');
    assert.deepEqual(
      states.map((e) => e.state),
      ['connecting', 'connected'],
    );
    assert.equal(client.transport, 'websocket');
  });

  it('derives the WebSocket URL from the base and sends an empty `since` on the first connect', () => {
    const { client, last } = setup({ url: 'https://gw.test/rt/', workspaceId: 'w1' });
    client.connect();
    const url = new URL(last().url);
    assert.equal(url.origin + url.pathname, 'wss://gw.test/rt/ws');
    assert.equal(url.searchParams.get('token'), 't0');
    assert.equal(url.searchParams.get('since'), '');
    assert.equal(url.searchParams.get('workspace_id'), 'w1');
    assert.equal(url.searchParams.has('rooms'), false);
  });

  it('gets the first token from getToken when none is given', async () => {
    const { client, sockets } = setup({ token: undefined, getToken: async () => 'from-source' });
    client.connect();
    assert.equal(sockets.length, 0);
    await flush();
    assert.equal(query(sockets[0].url).get('token'), 'from-source');
  });

  it('refreshes an expired JWT before dialing', async () => {
    const b64 = (o: object) => Buffer.from(JSON.stringify(o)).toString('base64url');
    const old = `${b64({ alg: 'HS256' })}.${b64({ sub: 'u', exp: 1000 })}.sig`;
    const { client, sockets } = setup({ token: old, getToken: () => 'new' });
    client.connect();
    await flush();
    assert.equal(query(sockets[0].url).get('token'), 'new');
  });

  it('disconnect() closes with 1000 and stays disconnected', () => {
    const { client, states, sockets, up } = setup();
    client.connect();
    const s = up();
    client.disconnect();
    assert.equal(s.closedWith, 1000);
    assert.equal(client.state, 'disconnected');
    assert.deepEqual(states.at(-1), { state: 'disconnected', code: 1000, reason: 'client' });
    tick(120_000);
    assert.equal(sockets.length, 1);
  });

  it('can connect again after disconnect()', () => {
    const { client, sockets, up } = setup();
    client.connect();
    up();
    client.disconnect();
    client.connect();
    assert.equal(sockets.length, 2);
    up();
    assert.equal(client.state, 'connected');
  });

  it('a dial that never gets `connected` times out and counts as a failure', () => {
    random(0.5);
    const { client, last, reconnecting } = setup({ transports: ['websocket'] });
    client.connect();
    const s = last();
    s.open();
    tick(10_000);
    assert.equal(s.closedWith, 1000);
    assert.equal(client.state, 'reconnecting');
    assert.equal(reconnecting()[0].code, 4000);
  });
});

describe('backoff', () => {
  it('grows exponentially and is capped at maxReconnectDelay', () => {
    random(0.999999);
    const { client, last, reconnecting } = setup({ transports: ['websocket'] });
    client.connect();
    for (let i = 0; i < 8; i++) {
      last().serverClose(1006);
      const { delay } = reconnecting()[i];
      tick(delay);
    }
    const delays = reconnecting().map((e) => Math.round(e.delay));
    assert.deepEqual(delays, [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
    assert.deepEqual(
      reconnecting().map((e) => e.attempt),
      [1, 2, 3, 4, 5, 6, 7, 8],
    );
  });

  it('uses full jitter: random(0, min(max, min * 2^attempt))', () => {
    const rnd = random(0);
    const { client, last, reconnecting } = setup({ transports: ['websocket'] });
    client.connect();
    last().serverClose(1006);
    assert.equal(reconnecting()[0].delay, 0);
    tick(0);
    rnd.mock.mockImplementation(() => 0.5);
    last().serverClose(1006);
    assert.equal(reconnecting()[1].delay, 1000); // half of 2000
    tick(1000);
    rnd.mock.restore();
    for (let i = 2; i < 40; i++) {
      last().serverClose(1006);
      const { delay } = reconnecting()[i];
      assert.ok(delay >= 0 && delay < Math.min(30000, 1000 * 2 ** i), `attempt ${i}: ${delay}`);
      tick(delay);
    }
  });

  it('resets the attempt once a session reaches `connected`', () => {
    random(0.999999);
    const { client, last, up, reconnecting } = setup({ transports: ['websocket'] });
    client.connect();
    last().serverClose(1006);
    tick(1000);
    last().serverClose(1006);
    tick(2000);
    last().serverClose(1006);
    assert.equal(reconnecting()[2].attempt, 3);
    tick(4000);
    up();
    last().serverClose(4008, 'slow consumer');
    const e = reconnecting()[3];
    assert.equal(e.attempt, 1);
    assert.ok(e.delay < 1000);
    assert.equal(e.code, 4008);
  });
});

describe('close codes', () => {
  it('4001 asks getToken and reconnects with the new token in the URL', async () => {
    let calls = 0;
    const { client, sockets, last, up, states } = setup({
      getToken: async () => {
        calls++;
        return 'fresh';
      },
    });
    client.connect();
    up();
    last().serverClose(4001, 'revoked');
    await flush();
    assert.equal(calls, 1);
    assert.equal(client.state, 'reconnecting');
    tick(0);
    assert.equal(sockets.length, 2);
    assert.equal(query(last().url).get('token'), 'fresh');
    assert.equal(client.token, 'fresh');
    assert.ok(!states.some((e) => e.state === 'disconnected'));
  });

  it('4002 (expired) does the same', async () => {
    const { client, last, up } = setup({ getToken: () => 'fresh' });
    client.connect();
    up();
    last().serverClose(4002, 'token expired');
    await flush();
    tick(0);
    assert.equal(query(last().url).get('token'), 'fresh');
  });

  it('4001 without getToken stays disconnected and says why', async () => {
    const { client, sockets, last, states } = setup();
    client.connect();
    last().open();
    last().serverClose(4001, 'unauthorized: expired');
    await flush();
    assert.equal(client.state, 'disconnected');
    assert.deepEqual(states.at(-1), { state: 'disconnected', code: 4001, reason: 'unauthorized: expired' });
    assert.deepEqual(client.lastError, { code: 4001, reason: 'unauthorized: expired' });
    tick(300_000);
    assert.equal(sockets.length, 1);
  });

  it('4001 when getToken gives the same token (or none) stays disconnected', async () => {
    const { client, sockets, last } = setup({ getToken: () => 't0' });
    client.connect();
    last().serverClose(4001, 'unauthorized');
    await flush();
    assert.equal(client.state, 'disconnected');
    tick(300_000);
    assert.equal(sockets.length, 1);
  });

  it('4003 stays disconnected', async () => {
    const { client, sockets, last } = setup();
    client.connect();
    last().serverClose(4003, 'forbidden: workspace');
    await flush();
    assert.equal(client.state, 'disconnected');
    assert.equal(client.lastError?.code, 4003);
    tick(300_000);
    assert.equal(sockets.length, 1);
  });

  it('4029 waits at least 30 s unless getToken gives a new token', async () => {
    random(0);
    const { client, sockets, last, reconnecting } = setup();
    client.connect();
    last().serverClose(4029, 'too many connections');
    await flush();
    assert.equal(reconnecting()[0].delay, 30000);
    tick(29_999);
    assert.equal(sockets.length, 1);
    tick(1);
    assert.equal(sockets.length, 2);
  });

  it('4029 with a new token from getToken reconnects without the 30 s floor', async () => {
    random(0);
    const { client, last, up, reconnecting } = setup({ getToken: () => 'other' });
    client.connect();
    up();
    last().serverClose(4029, 'too many connections');
    await flush();
    assert.ok(reconnecting()[0].delay < 30000);
  });

  it('1001 (drain) reconnects at once, within a second', () => {
    random(0.999);
    const { client, sockets, up, last, reconnecting } = setup();
    client.connect();
    up();
    last().serverClose(1001, 'shutting down');
    const { delay } = reconnecting()[0];
    assert.ok(delay < 1000);
    tick(delay);
    assert.equal(sockets.length, 2);
  });

  it('1013 honours `retry in N s` as the minimum delay', () => {
    random(0);
    const { client, sockets, last, reconnecting } = setup();
    client.connect();
    last().open();
    last().serverClose(1013, 'overloaded: too many connections (retry in 5 s)');
    assert.ok(reconnecting()[0].delay >= 5000);
    tick(4999);
    assert.equal(sockets.length, 1);
    tick(1);
    assert.equal(sockets.length, 2);
  });

  it('1003 and 1009 are reported as an error event and retried with backoff', () => {
    const { client, up, last, reconnecting } = setup();
    const errors: RealtimeMessage[] = [];
    client.on('error', (e) => errors.push(e));
    client.connect();
    up();
    last().serverClose(1009, 'message too big');
    assert.equal(errors.length, 1);
    assert.equal(errors[0].closeCode, 1009);
    assert.equal(reconnecting().length, 1);
  });

  it('our own disconnect() during a getToken wait wins', async () => {
    let release: (t: string) => void = () => {};
    const { client, sockets, last } = setup({ getToken: () => new Promise<string>((r) => (release = r)) });
    client.connect();
    last().serverClose(4002, 'expired');
    client.disconnect();
    release('late');
    await flush();
    tick(60_000);
    assert.equal(client.state, 'disconnected');
    assert.equal(sockets.length, 1);
  });
});

describe('resume', () => {
  it('reconnects with since=<last cursor>, its rooms, filter and workspace', async () => {
    const { client, up, last } = setup({ workspaceId: 'w1', eventTypes: ['ticket.created'] });
    client.connect();
    const s = up();
    const joined = client.joinRoom('support');
    assert.deepEqual(s.messages().at(-1), { type: 'join_room', room: 'support' });
    s.receive({ type: 'joined_room', data: { room: 'support' } });
    await joined;
    s.receive({ type: 'ticket.created', event: 'ticket.created', data: {}, id: 'e1', timestamp: 't', cursor: 'cur-1' });
    s.receive({ type: 'heartbeat', cursor: 'cur-2' });
    assert.equal(client.cursor, 'cur-2');
    s.serverClose(1006);
    tick(1000);
    const q = query(last().url);
    assert.equal(q.get('since'), 'cur-2');
    assert.equal(q.get('rooms'), 'support');
    assert.equal(q.get('event_types'), 'ticket.created');
    assert.equal(q.get('workspace_id'), 'w1');
  });

  it('starts from a saved cursor when given one', () => {
    const { client, last } = setup({ cursor: 'saved' });
    client.connect();
    assert.equal(query(last().url).get('since'), 'saved');
  });

  it('joinRoom while disconnected only adds to the set; the connect URL carries it', async () => {
    const { client, last } = setup();
    await client.joinRoom('a');
    await client.joinRoom('b');
    await client.subscribe(['x']);
    client.connect();
    const q = query(last().url);
    assert.equal(q.get('rooms'), 'a,b');
    assert.equal(q.get('event_types'), 'x');
  });

  it('a room joined while disconnected and refused at connect (4003) is undone, not fatal', async () => {
    const { client, sockets, last } = setup({ rooms: ['granted'] });
    const errors: RealtimeMessage[] = [];
    client.on('error', (e) => errors.push(e));
    await client.joinRoom('secret');
    client.connect();
    assert.equal(query(last().url).get('rooms'), 'granted,secret');
    last().serverClose(4003, 'forbidden: room secret');
    await flush();
    assert.equal(client.state, 'reconnecting');
    assert.deepEqual(
      errors.map((e) => e.code),
      ['forbidden'],
    );
    tick(0);
    assert.equal(sockets.length, 2);
    assert.equal(query(last().url).get('rooms'), 'granted');
    // The rooms the client started with are not undone: a second 4003 stops it.
    last().serverClose(4003, 'forbidden: room granted');
    await flush();
    assert.equal(client.state, 'disconnected');
  });

  it('a room joined while dialing is applied by reopening once `connected` comes', () => {
    const { client, sockets, last } = setup({ cursor: 'c0' });
    client.connect();
    void client.joinRoom('late');
    last().open();
    last().receive(connectedMessage({ cursor: 'c-now', recovered: false, reason: 'history_exceeded' }));
    assert.equal(sockets.length, 2);
    assert.equal(query(last().url).get('rooms'), 'late');
    assert.equal(query(last().url).get('since'), 'c0');
    assert.equal(client.state, 'connecting');
    assert.equal(sockets[0].closedWith, 1000);
  });

  it('a refused join_room is undone and rejects with the server code', async () => {
    const { client, up } = setup();
    client.connect();
    const s = up();
    const p = client.joinRoom('secret');
    s.receive({ type: 'error', code: 'forbidden', message: 'not granted' });
    await assert.rejects(p, { code: 'forbidden' });
    assert.equal(client.rooms.has('secret'), false);
  });

  it('subscribe/unsubscribe keep the server filter as the truth', async () => {
    const { client, up } = setup();
    client.connect();
    const s = up();
    const p = client.subscribe(['a', 'b']);
    s.receive({ type: 'subscribed', data: { event_types: ['a', 'b'] } });
    await p;
    const u = client.unsubscribe(['a']);
    assert.deepEqual(s.messages().at(-1), { type: 'unsubscribe', event_types: ['a'] });
    s.receive({ type: 'unsubscribed', data: { event_types: ['b'] } });
    await u;
    assert.deepEqual([...client.eventTypes], ['b']);
    const all = client.unsubscribe();
    assert.deepEqual(s.messages().at(-1), { type: 'unsubscribe' });
    s.receive({ type: 'unsubscribed', data: { event_types: [] } });
    await all;
    assert.equal(client.eventTypes.size, 0);
  });

  it('`recovered: false` emits `reload` and is on the connected state event', () => {
    const { client, up, states } = setup();
    const reloads: unknown[] = [];
    client.on('reload', (e) => reloads.push(e));
    client.connect();
    up({ recovered: false, reason: 'history_exceeded' });
    assert.deepEqual(reloads, [{ reason: 'history_exceeded' }]);
    assert.deepEqual(states.at(-1), {
      state: 'connected',
      transport: 'websocket',
      recovered: false,
      replayed: undefined,
    });
  });

  it('`recovered: true` does not ask for a reload', () => {
    const { client, up } = setup();
    let reloads = 0;
    client.on('reload', () => reloads++);
    client.connect();
    up({ recovered: true, replayed: 2 });
    assert.equal(reloads, 0);
  });

  it('drops events repeated across the reconnect seam, by id', () => {
    const { client, up, last } = setup();
    const got: string[] = [];
    client.on('notification', (m) => got.push(m.id as string));
    client.connect();
    const ev = (id: string, n: number) => ({
      type: 'notification',
      event: 'notification',
      data: {},
      id,
      timestamp: 't',
      cursor: `c${n}`,
    });
    up();
    last().receive(ev('e1', 1));
    last().receive(ev('e2', 2));
    last().serverClose(1006);
    tick(1000);
    up({ recovered: true, replayed: 2 });
    last().receive(ev('e2', 2));
    last().receive(ev('e3', 3));
    assert.deepEqual(got, ['e1', 'e2', 'e3']);
  });

  it('keeps a bounded memory of ids', () => {
    const { client, up, last } = setup();
    let n = 0;
    client.on('x', () => n++);
    client.connect();
    up();
    for (let i = 0; i < 1001; i++) last().receive({ type: 'x', event: 'x', data: {}, id: `e${i}`, cursor: 'c' });
    last().receive({ type: 'x', event: 'x', data: {}, id: 'e0', cursor: 'c' }); // forgotten: delivered again
    last().receive({ type: 'x', event: 'x', data: {}, id: 'e1000', cursor: 'c' }); // remembered
    assert.equal(n, 1002);
  });
});

describe('dispatch', () => {
  it('by type, task updates also by event, and * for everything', () => {
    const { client, up, last } = setup();
    const seen: string[] = [];
    client.on('task_update', (m) => seen.push(`type:${m.event}`));
    const off = client.on('task.created', (m) => seen.push(`event:${(m as RealtimeMessage).event}`));
    client.on('*', (m) => seen.push(`*:${m.type}`));
    client.on('connected', (m) => seen.push(`connected:${m.user_id}`));
    client.connect();
    up();
    const task = {
      type: 'task_update',
      event: 'task.created',
      task: { id: 1 },
      id: 'e1',
      timestamp: 't',
      cursor: 'c1',
    };
    last().receive(task);
    off();
    last().receive({ ...task, id: 'e2' });
    assert.deepEqual(seen, [
      'connected:u-1',
      '*:connected',
      'type:task.created',
      'event:task.created',
      '*:task_update',
      'type:task.created',
      '*:task_update',
    ]);
  });

  it('off(type) removes every listener of the type; a throwing listener breaks nothing', () => {
    const { client, up, last } = setup();
    const err = mock.method(console, 'error', () => {});
    let n = 0;
    client.on('a', () => {
      throw new Error('boom');
    });
    client.on('a', () => n++);
    client.connect();
    up();
    last().receive({ type: 'a', id: '1' });
    assert.equal(n, 1);
    assert.equal(err.mock.callCount(), 1);
    client.off('a');
    last().receive({ type: 'a', id: '2' });
    assert.equal(n, 1);
  });
});

describe('heartbeat', () => {
  it('pings every interval and closes a connection that stays silent', () => {
    random(0.5);
    const { client, up, last, reconnecting } = setup({ pingInterval: 30000, pongTimeout: 10000 });
    client.connect();
    const s = up();
    tick(30000);
    assert.deepEqual(s.messages(), [{ type: 'ping' }]);
    s.receive({ type: 'pong', server_time: 't', cursor: 'cur-9' });
    assert.equal(client.cursor, 'cur-9');
    tick(30000);
    assert.equal(s.messages().length, 2);
    tick(9999);
    assert.equal(client.state, 'connected');
    tick(1);
    assert.equal(s.closedWith, 1000);
    assert.equal(client.state, 'reconnecting');
    assert.equal(reconnecting()[0].code, 4000);
    tick(reconnecting()[0].delay);
    assert.equal(query(last().url).get('since'), 'cur-9');
  });

  it('any message counts as a sign of life', () => {
    const { client, up } = setup();
    client.connect();
    const s = up();
    tick(30000);
    tick(5000);
    s.receive({ type: 'x', event: 'x', id: 'e', data: {}, cursor: 'c' });
    tick(9000);
    assert.equal(client.state, 'connected');
  });
});

describe('requests', () => {
  it('rpc resolves with rpc_result, matched by id', async () => {
    const { client, up } = setup();
    client.connect();
    const s = up();
    const a = client.rpc('tickets.get', { id: 1 });
    const b = client.rpc('tickets.list', {});
    const [ma, mb] = s.messages();
    assert.equal(ma.type, 'rpc');
    assert.equal(ma.method, 'tickets.get');
    assert.deepEqual(ma.data, { id: 1 });
    assert.notEqual(ma.id, mb.id);
    s.receive({ type: 'rpc_result', id: mb.id, data: ['list'] });
    s.receive({ type: 'rpc_result', id: ma.id, data: { title: 'one' } });
    assert.deepEqual(await a, { title: 'one' });
    assert.deepEqual(await b, ['list']);
  });

  it('rpc rejects with the server error code', async () => {
    const { client, up } = setup();
    client.connect();
    const s = up();
    const p = client.rpc('nope');
    s.receive({ type: 'rpc_error', id: s.messages()[0].id, error: { code: 'unknown_method', message: 'no backend' } });
    await assert.rejects(
      p,
      (e: RealtimeError) => e.code === 'unknown_method' && e.message === 'no backend' && e instanceof Error,
    );
  });

  it('rpc rejects `timeout` locally, and a late answer is ignored', async () => {
    const { client, up } = setup({ rpcTimeout: 5000 });
    client.connect();
    const s = up();
    const p = client.rpc('slow', null);
    const q = client.rpc('slower', null, { timeout: 100 });
    tick(100);
    await assert.rejects(q, { code: 'timeout' });
    tick(4900);
    await assert.rejects(p, { code: 'timeout' });
    s.receive({ type: 'rpc_result', id: s.messages()[0].id, data: 1 });
  });

  it('requests reject `disconnected` when not connected or when the socket closes', async () => {
    const { client, up, last } = setup();
    await assert.rejects(client.rpc('m'), { code: 'disconnected' });
    client.connect();
    up();
    const p = client.rpc('m');
    const q = client.presence();
    last().serverClose(1006);
    await assert.rejects(p, { code: 'disconnected' });
    await assert.rejects(q, { code: 'disconnected' });
  });

  it('publish is acknowledged with the event id', async () => {
    const { client, up } = setup();
    client.connect();
    const s = up();
    const p = client.publish('room-1', { text: 'hi' }, { eventType: 'chat.message', ephemeral: true });
    const m = s.messages()[0];
    assert.deepEqual(
      { ...m, id: undefined },
      {
        type: 'publish',
        room: 'room-1',
        data: { text: 'hi' },
        event_type: 'chat.message',
        ephemeral: true,
        id: undefined,
      },
    );
    s.receive({ type: 'published', id: m.id, data: { room: 'room-1', event_id: 'ev-7' } });
    assert.deepEqual(await p, { eventId: 'ev-7', room: 'room-1' });
  });

  it('a refused publish rejects with the error code of its id', async () => {
    const { client, up } = setup();
    client.connect();
    const s = up();
    const before = client.joinRoom('r');
    const p = client.publish('r', {});
    s.receive({ type: 'error', code: 'forbidden', message: 'join the room first', id: s.messages()[1].id });
    await assert.rejects(p, { code: 'forbidden' });
    s.receive({ type: 'joined_room', data: { room: 'r' } });
    await before;
  });

  it('presence resolves with users; `unavailable` when presence is off', async () => {
    const { client, up } = setup();
    client.connect();
    const s = up();
    const p = client.presence('room-1');
    assert.deepEqual(s.messages()[0], { type: 'presence', room: 'room-1' });
    s.receive({ type: 'presence', data: { users: ['a', 'b'], truncated: false, room: 'room-1' } });
    assert.deepEqual(await p, { users: ['a', 'b'], truncated: false, room: 'room-1' });
    const off = client.presence();
    s.receive({ type: 'error', code: 'unavailable', message: 'presence is off' });
    await assert.rejects(off, { code: 'unavailable' });
  });

  it('in-order replies settle in order, around pings', async () => {
    const { client, up } = setup();
    client.connect();
    const s = up();
    const j = client.joinRoom('a');
    tick(30000); // a ping goes out between the two requests
    const p = client.presence();
    s.receive({ type: 'joined_room', data: { room: 'a' } });
    s.receive({ type: 'pong', cursor: 'c' });
    s.receive({ type: 'presence', data: { users: [], truncated: false } });
    await j;
    assert.deepEqual(await p, { users: [], truncated: false });
  });
});

describe('SSE fallback', () => {
  it('uses EventSource after two WebSocket dials that never opened, then goes back to WebSocket', async () => {
    random(0);
    const { client, sockets, sources, last, states } = setup({ workspaceId: 'w' });
    client.connect();
    sockets[0].serverClose(1006);
    tick(0);
    assert.equal(sockets.length, 2);
    sockets[1].serverClose(1006);
    tick(0);
    assert.equal(sockets.length, 2);
    assert.equal(sources.length, 1);
    const es = sources[0];
    const url = new URL(es.url);
    assert.equal(url.origin + url.pathname, 'http://gw.test/events');
    assert.equal(url.searchParams.get('token'), 't0');
    assert.equal(url.searchParams.get('since'), '');
    assert.equal(url.searchParams.get('workspace_id'), 'w');
    es.open();
    es.receive(connectedMessage({ cursor: 'sse-0' }));
    assert.equal(client.state, 'connected');
    assert.equal(client.transport, 'sse');
    assert.deepEqual(states.at(-1), {
      state: 'connected',
      transport: 'sse',
      recovered: undefined,
      replayed: undefined,
    });

    // Receive-only: calls are refused, room changes reopen the stream.
    await assert.rejects(client.rpc('m'), { code: 'unsupported_transport' });
    await assert.rejects(client.publish('r', {}), { code: 'unsupported_transport' });
    await assert.rejects(client.presence(), { code: 'unsupported_transport' });
    es.receive({ type: 'n', event: 'n', data: {}, id: 'e1', cursor: 'sse-1' });
    await client.joinRoom('r1');
    assert.ok(es.closed);
    assert.equal(sources.length, 2);
    assert.equal(query(sources[1].url).get('rooms'), 'r1');
    assert.equal(query(sources[1].url).get('since'), 'sse-1');
    sources[1].open();
    sources[1].receive(connectedMessage({ cursor: 'sse-2' }));

    // A WebSocket is tried in the background; once it is `connected` it replaces the stream.
    tick(60000);
    assert.equal(sockets.length, 3);
    const ws = last();
    assert.equal(query(ws.url).get('since'), 'sse-2');
    assert.equal(query(ws.url).get('rooms'), 'r1');
    ws.open();
    ws.receive(connectedMessage({ recovered: true, replayed: 0 }));
    assert.ok(sources[1].closed);
    assert.equal(client.transport, 'websocket');
    assert.equal(client.state, 'connected');
    const p = client.rpc('m');
    ws.receive({ type: 'rpc_result', id: ws.messages()[0].id, data: 'ok' });
    assert.equal(await p, 'ok');
  });

  it('an EventSource error closes it and our own backoff reconnects', () => {
    random(0.5);
    const { client, sources, reconnecting } = setup({ transports: ['sse', 'websocket'] });
    client.connect();
    assert.equal(sources.length, 1);
    sources[0].open();
    sources[0].receive(connectedMessage({ cursor: 'k1' }));
    sources[0].error();
    assert.ok(sources[0].closed);
    assert.equal(client.state, 'reconnecting');
    tick(reconnecting()[0].delay);
    assert.equal(sources.length, 2);
    assert.equal(query(sources[1].url).get('since'), 'k1');
  });

  it('learns why an EventSource was refused (401 -> getToken, 403 -> stop) from the same URL', async () => {
    random(0);
    const answers = [
      { status: 401, body: { error: 'unauthorized', reason: 'expired' } },
      { status: 403, body: { error: 'forbidden', reason: 'room secret is not granted' } },
    ];
    const fetched: string[] = [];
    mock.method(globalThis, 'fetch', async (url: string) => {
      fetched.push(url);
      const a = answers.shift();
      return new Response(JSON.stringify(a?.body), { status: a?.status });
    });
    const { client, sources, states } = setup({ transports: ['sse'], getToken: () => 'fresh' });
    client.connect();
    sources[0].error();
    assert.ok(sources[0].closed);
    await flush();
    await flush();
    assert.equal(fetched[0], sources[0].url);
    tick(0);
    assert.equal(sources.length, 2);
    assert.equal(query(sources[1].url).get('token'), 'fresh');
    sources[1].error();
    await flush();
    await flush();
    assert.equal(client.state, 'disconnected');
    assert.deepEqual(states.at(-1), { state: 'disconnected', code: 4003, reason: 'room secret is not granted' });
  });

  it('a room change refused over SSE is undone and the stream reopened without it', async () => {
    random(0);
    mock.method(globalThis, 'fetch', async () => new Response('{"error":"forbidden","reason":"no"}', { status: 403 }));
    const { client, sources } = setup({ transports: ['sse'] });
    client.connect();
    sources[0].open();
    sources[0].receive(connectedMessage());
    await client.joinRoom('secret');
    assert.equal(query(sources[1].url).get('rooms'), 'secret');
    sources[1].error();
    await flush();
    await flush();
    assert.equal(client.rooms.has('secret'), false);
    tick(0);
    assert.equal(sources.length, 3);
    assert.equal(query(sources[2].url).has('rooms'), false);
  });

  it('finds the global WebSocket and EventSource when none are given', () => {
    random(0);
    const { sockets, sources, WS, ES } = setup();
    const g = globalThis as Record<string, unknown>;
    g.WebSocket = WS;
    g.EventSource = ES;
    try {
      const client = new RealtimeClient({ url: 'http://gw.test' });
      client.connect();
      sockets[0].serverClose(1006);
      tick(0);
      sockets[1].serverClose(1006);
      tick(0);
      assert.equal(sources.length, 1);
      client.disconnect();
    } finally {
      delete g.WebSocket;
      delete g.EventSource;
    }
  });

  it('does not fall back once a WebSocket has worked', () => {
    random(0);
    const { client, sockets, sources, up } = setup();
    client.connect();
    up();
    for (let i = 0; i < 3; i++) {
      sockets.at(-1)?.serverClose(1006);
      tick(0);
    }
    assert.equal(sources.length, 0);
    assert.equal(sockets.length, 4);
  });
});

describe('browser events', () => {
  it('`online` and a visible tab reconnect at once', () => {
    random(0.999);
    const win = new EventTarget();
    const doc = Object.assign(new EventTarget(), { visibilityState: 'visible' });
    const g = globalThis as Record<string, unknown>;
    g.addEventListener = win.addEventListener.bind(win);
    g.removeEventListener = win.removeEventListener.bind(win);
    g.document = doc;
    try {
      const { client, sockets, last, reconnecting } = setup({ transports: ['websocket'] });
      client.connect();
      last().serverClose(1006);
      last();
      tick(100);
      assert.equal(sockets.length, 1);
      assert.ok(reconnecting()[0].delay > 900);
      win.dispatchEvent(new Event('online'));
      assert.equal(sockets.length, 2);
      last().serverClose(1006);
      doc.visibilityState = 'hidden';
      doc.dispatchEvent(new Event('visibilitychange'));
      assert.equal(sockets.length, 2);
      doc.visibilityState = 'visible';
      doc.dispatchEvent(new Event('visibilitychange'));
      assert.equal(sockets.length, 3);
      // Only a pending delay is cut short: nothing happens while connected.
      last().open();
      last().receive(connectedMessage());
      win.dispatchEvent(new Event('online'));
      assert.equal(sockets.length, 3);
      client.disconnect();
      win.dispatchEvent(new Event('online'));
      assert.equal(sockets.length, 3);
    } finally {
      delete g.addEventListener;
      delete g.removeEventListener;
      delete g.document;
    }
  });
});
