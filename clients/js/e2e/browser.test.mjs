// End-to-end tests of the browser client in headless Chromium (Debian's package, driven by
// playwright-core) against the real gateway binary and a real Kafka-protocol broker.
//
// Run by `make test` (scripts/test.sh) after the Rust tests, with:
//   KAFKA_TEST_BROKERS  the throwaway broker of scripts/with-broker.sh
//   GATEWAY_BIN         the websocket-service binary
//   EVENT_PUBLISH_BIN   the event-publish CLI (writes to Kafka while the gateway is down)
// A missing one is a failure, never a skip.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const repo = join(here, '..', '..', '..');
const SECRET = 'browser-e2e-secret-0123456789';
const API_KEY = 'browser-e2e-api-key-0123456789';
const WAIT = 20_000;

function required(name) {
  const value = process.env[name];
  assert.ok(value, `${name} is not set: run the browser tests with \`make test\``);
  return value;
}

const brokers = required('KAFKA_TEST_BROKERS');
const gatewayBin = required('GATEWAY_BIN');
const publishBin = required('EVENT_PUBLISH_BIN');

function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

async function until(what, check, limit = WAIT) {
  const deadline = Date.now() + limit;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const children = new Set();

function start(cmd, args, env, name) {
  const child = spawn(cmd, args, { env: { PATH: process.env.PATH, ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  child.stderr.on('data', (d) => {
    log = (log + d).slice(-4000);
  });
  child.on('exit', () => children.delete(child));
  children.add(child);
  child.log = () => `${name}: ${log}`;
  return child;
}

function killed(child, signal = 'SIGKILL') {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once('exit', () => resolve());
    child.kill(signal);
  });
}

/** A gateway process on `topic`, ready to serve. */
async function gateway({ topic, port, internalPort, extra = {} }) {
  const child = start(
    gatewayBin,
    [],
    {
      HOST: '127.0.0.1',
      PORT: String(port),
      INTERNAL_PORT: String(internalPort),
      JWT_SECRET: SECRET,
      SERVER_API_KEY: API_KEY,
      KAFKA_BROKERS: brokers,
      KAFKA_TOPICS: topic,
      KAFKA_CREATE_TOPICS: 'true',
      KAFKA_METADATA_REFRESH_SECS: '1',
      RDKAFKA_FETCH_WAIT_MAX_MS: '10',
      PRESENCE_ENABLED: 'true',
      ROOMS_PUBLIC: 'chat:*',
      CLIENT_PUBLISH_ROOMS: 'chat:*=members',
      CORS_ORIGINS: '*',
      RUST_LOG: 'warn',
      ...extra,
    },
    'gateway',
  );
  await until('the gateway to be ready', async () => {
    if (child.exitCode !== null) throw new Error(`the gateway exited: ${child.log()}`);
    try {
      return (await fetch(`http://127.0.0.1:${port}/ready`)).status === 200;
    } catch {
      return false;
    }
  });
  return child;
}

/** The demo server (static files, dev tokens, publish proxy). */
async function demo({ port, gatewayPort, internalPort }) {
  const child = start(
    process.execPath,
    [join(here, '..', 'demo', 'server.mjs')],
    {
      DEMO_PORT: String(port),
      GATEWAY_URL: `http://127.0.0.1:${gatewayPort}`,
      GATEWAY_INTERNAL_URL: `http://127.0.0.1:${internalPort}`,
      JWT_SECRET: SECRET,
      SERVER_API_KEY: API_KEY,
    },
    'demo',
  );
  await until('the demo server', async () => {
    try {
      return (await fetch(`http://127.0.0.1:${port}/token?user=probe`)).ok;
    } catch {
      return false;
    }
  });
  return child;
}

/** Writes a generic event for `user` straight to Kafka (the gateway may be down). */
function publishToKafka(topic, user, type, data) {
  return new Promise((resolve, reject) => {
    const child = spawn(
      publishBin,
      [
        '--via',
        'kafka',
        '--topic',
        topic,
        '--type',
        type,
        '--data',
        JSON.stringify(data),
        '--to',
        JSON.stringify({ user }),
      ],
      { env: { PATH: process.env.PATH, KAFKA_BROKERS: brokers }, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
    });
    child.stderr.on('data', (d) => {
      out += d;
    });
    child.on('exit', (code) => (code === 0 ? resolve(out.trim()) : reject(new Error(`event-publish: ${out}`))));
  });
}

/** The users the gateway lists online (no workspace), from its internal presence API. */
async function online() {
  const answer = await fetch(`http://127.0.0.1:${internalPort}/api/presence`, {
    headers: { authorization: `Bearer ${API_KEY}` },
  });
  assert.equal(answer.status, 200, await answer.clone().text());
  return (await answer.json()).users;
}

const topicName = (name) => `browser-${name}-${Date.now()}-${Math.floor(Math.random() * 1e6)}`;

let browser;
let gatewayPort;
let internalPort;
let demoPort;
let topic;
let gw;
let base;

before(async () => {
  browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  [gatewayPort, internalPort, demoPort] = await Promise.all([freePort(), freePort(), freePort()]);
  topic = topicName('demo');
  gw = await gateway({ topic, port: gatewayPort, internalPort });
  await demo({ port: demoPort, gatewayPort, internalPort });
  base = `http://127.0.0.1:${demoPort}`;
});

after(async () => {
  await browser?.close();
  await Promise.all([...children].map((c) => killed(c)));
});

/** A page of the demo's origin where `window.mk(options)` makes a client of the package. */
async function clientPage(user) {
  const page = await browser.newPage();
  await page.goto(`${base}/e2e/fixture.html?user=${encodeURIComponent(user)}`);
  await page.waitForFunction(() => typeof window.mk === 'function');
  return page;
}

describe('browser client', { concurrency: false }, () => {
  test('the demo page shows an event published to Kafka, and publishes through the HTTP API', async () => {
    const page = await browser.newPage();
    await page.goto(`${base}/?user=alice`);
    await page.waitForFunction(() => document.querySelector('#state')?.textContent?.trim() === 'connected', null, {
      timeout: WAIT,
    });
    await publishToKafka(topic, 'alice', 'demo.kafka', { text: 'from kafka' });
    await page.waitForFunction(() => document.querySelector('#events')?.textContent?.includes('from kafka'), null, {
      timeout: WAIT,
    });
    await page.fill('#message', 'from the form');
    await page.click('#publish-form button[type=submit], #publish-form button');
    await page.waitForFunction(() => document.querySelector('#events')?.textContent?.includes('from the form'), null, {
      timeout: WAIT,
    });
    await page.waitForFunction(() => document.querySelector('#online')?.textContent?.includes('alice'), null, {
      timeout: WAIT,
    });
    const shots = join(repo, 'target');
    mkdirSync(shots, { recursive: true });
    await page.screenshot({ path: join(shots, 'demo-page.png'), fullPage: true });
    await page.close();
  });

  test('two tabs of one user both receive', async () => {
    const tabs = [await clientPage('bob'), await clientPage('bob')];
    for (const tab of tabs) {
      await tab.evaluate(() => window.mk({}));
      await tab.waitForFunction(() => window.states.includes('connected'), null, { timeout: WAIT });
    }
    await publishToKafka(topic, 'bob', 'tabs.test', { n: 1 });
    for (const tab of tabs) {
      await tab.waitForFunction(() => window.got.some((m) => m.type === 'tabs.test'), null, { timeout: WAIT });
      await tab.close();
    }
  });

  test('a 4001 with getToken refreshes the token and continues', async () => {
    const page = await clientPage('carol');
    await page.evaluate(() => window.mk({ token: 'not-a-jwt-refreshed', refresh: true }));
    await page.waitForFunction(() => window.states.includes('connected'), null, { timeout: WAIT });
    const seen = await page.evaluate(() => ({ closes: window.closes, refreshed: window.refreshed }));
    assert.ok(seen.closes.includes(4001), `closed 4001 first: ${JSON.stringify(seen)}`);
    assert.equal(seen.refreshed, 1);
    await publishToKafka(topic, 'carol', 'after.refresh', { ok: true });
    await page.waitForFunction(() => window.got.some((m) => m.type === 'after.refresh'), null, { timeout: WAIT });
    // Without getToken a 4001 leaves it disconnected, saying why.
    await page.evaluate(() => window.mk({ token: 'not-a-jwt-stuck', name: 'stuck' }));
    await page.waitForFunction(() => window.stuck?.closes.includes(4001), null, { timeout: WAIT });
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(await page.evaluate(() => window.stuck.client.state), 'disconnected');
    await page.close();
  });

  test('rpc and publish through the gateway: a publication reaches the other member, an unknown method is refused', async () => {
    const [gina, hank] = [await clientPage('gina'), await clientPage('hank')];
    for (const page of [gina, hank]) {
      await page.evaluate(() => window.mk({ rooms: ['chat:1'] }));
      await page.waitForFunction(() => window.states.includes('connected'), null, { timeout: WAIT });
    }
    const sent = await gina.evaluate(() =>
      window.client.publish('chat:1', { text: 'hi hank' }, { eventType: 'chat.message' }),
    );
    assert.ok(sent.eventId, JSON.stringify(sent));
    await hank.waitForFunction(() => window.got.some((m) => m.type === 'chat.message'), null, { timeout: WAIT });
    const got = await hank.evaluate(() => window.got.find((m) => m.type === 'chat.message'));
    assert.deepEqual([got.from.user, got.data.text, got.id], ['gina', 'hi hank', sent.eventId]);
    const refused = await gina.evaluate(() =>
      window.client.publish('lobby', {}).then(
        () => 'published',
        (e) => e.code,
      ),
    );
    assert.equal(refused, 'forbidden');
    const rpc = await gina.evaluate(() =>
      window.client.rpc('nobody.home', {}).then(
        () => 'answered',
        (e) => e.code,
      ),
    );
    assert.equal(rpc, 'unknown_method');
    assert.ok(
      !(await gina.evaluate(() => window.got.some((m) => m.type === 'chat.message'))),
      'not back to the sender',
    );
    await gina.close();
    await hank.close();
  });

  test('falls back to SSE when WebSocket is refused', async () => {
    const page = await clientPage('dave');
    await page.evaluate(() => window.mk({ websocketUrl: 'ws://127.0.0.1:1/ws', minReconnectDelay: 100 }));
    await page.waitForFunction(() => window.states.includes('connected'), null, { timeout: WAIT });
    assert.equal(await page.evaluate(() => window.client.transport), 'sse');
    await publishToKafka(topic, 'dave', 'over.sse', { ok: true });
    await page.waitForFunction(() => window.got.some((m) => m.type === 'over.sse'), null, { timeout: WAIT });
    await page.close();
  });

  test('after the gateway is killed and restarted the page reconnects by itself; events written meanwhile appear exactly once', async () => {
    const page = await clientPage('erin');
    await page.evaluate(() => window.mk({ minReconnectDelay: 200, maxReconnectDelay: 1000 }));
    await page.waitForFunction(() => window.states.includes('connected'), null, { timeout: WAIT });
    await publishToKafka(topic, 'erin', 'seq', { n: 0 });
    await page.waitForFunction(() => window.got.some((m) => m.type === 'seq'), null, { timeout: WAIT });
    await killed(gw, 'SIGKILL');
    await page.waitForFunction(() => window.client.state !== 'connected', null, { timeout: WAIT });
    for (let n = 1; n <= 5; n++) await publishToKafka(topic, 'erin', 'seq', { n });
    gw = await gateway({ topic, port: gatewayPort, internalPort });
    await page.waitForFunction(() => window.got.filter((m) => m.type === 'seq').length >= 6, null, { timeout: WAIT });
    await publishToKafka(topic, 'erin', 'seq', { n: 6 });
    await page.waitForFunction(() => window.got.filter((m) => m.type === 'seq').length >= 7, null, { timeout: WAIT });
    const ns = await page.evaluate(() => window.got.filter((m) => m.type === 'seq').map((m) => m.data.n));
    assert.deepEqual(ns, [0, 1, 2, 3, 4, 5, 6], 'every event once, in order');
    const connects = await page.evaluate(() => window.states.filter((s) => s === 'connected').length);
    assert.ok(connects >= 2, 'it reconnected');
    await page.close();
  });

  test('the React hooks connect, render state and events, and disconnect on unmount', async () => {
    const page = await browser.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(`${base}/e2e/react.html?user=frank`);
    await page.waitForFunction(
      () =>
        document.querySelector('#react-state')?.textContent === 'connected' &&
        document.querySelector('#react-state-2')?.textContent === 'connected',
      null,
      { timeout: WAIT },
    );
    await until('frank to be online', async () => (await online()).includes('frank'));
    await publishToKafka(topic, 'frank', 'react.test', { n: 1 });
    await page.waitForFunction(() => document.querySelector('#react-events')?.textContent === '1', null, {
      timeout: WAIT,
    });
    await page.click('#unmount');
    await page.waitForSelector('#unmounted', { timeout: WAIT });
    assert.equal(await page.evaluate(() => window.reactClient.state), 'disconnected');
    // The gateway saw the session end: frank goes offline (after the presence grace).
    await until('frank to be offline', async () => !(await online()).includes('frank'));
    await publishToKafka(topic, 'frank', 'react.test', { n: 2 });
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(await page.evaluate(() => window.reactClient.state), 'disconnected');
    assert.equal(await page.$('#react-events'), null, 'nothing rendered after unmount');
    const states = await page.evaluate(() => window.reactStates);
    assert.equal(states[0], 'disconnected');
    assert.ok(states.includes('connected'), JSON.stringify(states));
    assert.deepEqual(errors, []);
    await page.close();
  });
});
