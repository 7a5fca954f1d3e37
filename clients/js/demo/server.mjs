#!/usr/bin/env node
// The demo's backend, with no dependencies: serves the page and the built client, mints dev
// tokens, and forwards publications to the gateway's internal publish API.
//
// It hands out a token for any user who asks: a development tool, never to be exposed.
//
//   DEMO_PORT             8080
//   DEMO_HOST             127.0.0.1
//   GATEWAY_URL           http://127.0.0.1:8005   (what the browser connects to)
//   GATEWAY_INTERNAL_URL  http://127.0.0.1:9005   (POST /api/publish)
//   JWT_SECRET            dev-secret-change-me    (the gateway's, as `make run` sets it)
//   JWT_ISSUER, JWT_AUDIENCE                      (when the gateway requires them)
//   SERVER_API_KEY                                (the gateway's; /publish needs it)
import { createHmac } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { dirname, extname, join, normalize, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const env = process.env;
const port = Number(env.DEMO_PORT || 8080);
const host = env.DEMO_HOST || '127.0.0.1';
const gatewayUrl = env.GATEWAY_URL || 'http://127.0.0.1:8005';
const internalUrl = (env.GATEWAY_INTERNAL_URL || 'http://127.0.0.1:9005').replace(/\/+$/, '');
const secret = env.JWT_SECRET || 'dev-secret-change-me';
const apiKey = env.SERVER_API_KEY || '';

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, '..', 'dist');
const types = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.map': 'application/json',
};

const b64url = (data) => Buffer.from(data).toString('base64url');

/** An HS256 JWT, as the gateway verifies it with JWT_SECRET. */
function sign(claims) {
  const head = `${b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))}.${b64url(JSON.stringify(claims))}`;
  return `${head}.${createHmac('sha256', secret).update(head).digest('base64url')}`;
}

function send(res, status, body, type = 'application/json') {
  const data = typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body);
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
  res.end(data);
}

async function readBody(req, limit = 1 << 20) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > limit) throw Object.assign(new Error('body too large'), { status: 413 });
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

async function handle(req, res) {
  const url = new URL(req.url || '/', 'http://demo');
  const path = url.pathname;

  if (req.method === 'GET' && (path === '/' || path === '/index.html')) {
    return send(res, 200, await readFile(join(here, 'index.html')), types['.html']);
  }

  // The browser tests' page (clients/js/e2e/fixture.html): a client of the package, driven by them.
  if (req.method === 'GET' && path === '/e2e/fixture.html') {
    return send(res, 200, await readFile(join(here, '..', 'e2e', 'fixture.html')), types['.html']);
  }

  // The browser tests' React page (e2e/react.html) and its bundle, built by `npm run build:e2e`.
  if (req.method === 'GET' && path === '/e2e/react.html') {
    return send(res, 200, await readFile(join(here, '..', 'e2e', 'react.html')), types['.html']);
  }
  if (req.method === 'GET' && path === '/e2e/react-app.js') {
    try {
      return send(res, 200, await readFile(join(here, '..', '.e2e-build', 'react-app.js')), types['.js']);
    } catch {
      return send(res, 404, { error: 'not found: run `npm run build:e2e` first' });
    }
  }

  if (req.method === 'GET' && path.startsWith('/dist/')) {
    const file = normalize(join(dist, decodeURIComponent(path.slice('/dist/'.length))));
    if (!file.startsWith(dist + sep)) return send(res, 404, { error: 'not found' });
    try {
      return send(res, 200, await readFile(file), types[extname(file)] || 'application/octet-stream');
    } catch {
      return send(res, 404, { error: 'not found: run `npm run build` first' });
    }
  }

  if (req.method === 'GET' && path === '/token') {
    const user = url.searchParams.get('user') || 'demo-user';
    const now = Math.floor(Date.now() / 1000);
    const claims = { sub: user, iat: now, exp: now + 3600 };
    const workspace = url.searchParams.get('workspace_id');
    if (workspace) claims.workspace_id = workspace;
    if (env.JWT_ISSUER) claims.iss = env.JWT_ISSUER;
    if (env.JWT_AUDIENCE) claims.aud = env.JWT_AUDIENCE;
    return send(res, 200, { token: sign(claims), user, gatewayUrl, exp: claims.exp });
  }

  if (req.method === 'POST' && path === '/publish') {
    if (!apiKey) {
      return send(res, 503, { error: 'SERVER_API_KEY is not set: start the demo with the gateway API key' });
    }
    const body = await readBody(req);
    try {
      const answer = await fetch(`${internalUrl}/api/publish`, {
        method: 'POST',
        headers: { authorization: `Bearer ${apiKey}`, 'content-type': 'application/json' },
        body,
        signal: AbortSignal.timeout(10_000),
      });
      return send(res, answer.status, await answer.text(), answer.headers.get('content-type') || 'application/json');
    } catch (e) {
      return send(res, 502, { error: `gateway not reachable at ${internalUrl}: ${e.cause?.message || e.message}` });
    }
  }

  send(res, 404, { error: 'not found' });
}

const server = createServer((req, res) => {
  handle(req, res).catch((e) => send(res, e.status || 500, { error: e.message }));
});

server.listen(port, host, () => {
  const { port: bound } = server.address();
  if (!env.JWT_SECRET) console.log('demo: JWT_SECRET not set, signing with dev-secret-change-me (as `make run`)');
  if (!apiKey) console.log('demo: SERVER_API_KEY not set, the publish form will answer 503');
  console.log(`demo: http://127.0.0.1:${bound}/`);
});
