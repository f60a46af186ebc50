// Bad input from the network gets a clear error and closes at most its own session, never the server:
// a forged token, an oversize message and junk JSON (raw WebSocket from Node). Afterwards /healthz is 200 and a
// new participant joins and talks.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { Harness, httpGet, waitForMediaFrom } from './lib/harness.mjs';
import { RawClient } from './lib/rawws.mjs';

const h = new Harness();
const clients = [];
after(async () => {
  for (const c of clients) c.close();
  await h.close();
});

async function client(server) {
  const c = await RawClient.open(server.wsUrl);
  clients.push(c);
  return c;
}

async function devToken(server, room, name) {
  const r = await httpGet(server, `/dev/token?room=${encodeURIComponent(room)}&name=${encodeURIComponent(name)}`);
  assert.equal(r.status, 200, `/dev/token: ${r.status} ${r.body}`);
  const j = JSON.parse(r.body);
  assert.equal(typeof j.token, 'string');
  assert.equal(typeof j.identity, 'string');
  return j;
}

async function joinRaw(server, room, name) {
  const c = await client(server);
  const { token } = await devToken(server, room, name);
  c.send({ type: 'join', token, protocol: 1 });
  const joined = await c.next((m) => m.type === 'joined' || m.type === 'error', 5000, 'joined');
  assert.equal(joined.type, 'joined', `join failed: ${JSON.stringify(joined)}`);
  return { c, joined };
}

/** The socket is still usable: ping gets its pong. */
async function assertAlive(c, what) {
  const ts = `alive-${Math.random()}`;
  c.send({ type: 'ping', ts });
  const pong = await c.next((m) => m.type === 'pong' && m.ts === ts, 5000, `pong (${what})`);
  assert.equal(pong.ts, ts);
}

const b64u = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');

test('a forged token, an oversize message and junk JSON each get a clear error and the server stays up', { timeout: 90000 }, async () => {
  const server = await h.startServer();

  // Forged token 1: a real token's claims changed to another room, old signature kept.
  {
    const { token } = await devToken(server, 'victim', 'mallory');
    const [head, body, sig] = token.split('.');
    const claims = JSON.parse(Buffer.from(body, 'base64url').toString());
    claims.video.room = 'other-room';
    claims.sub = 'admin';
    const forged = `${head}.${b64u(claims)}.${sig}`;
    const c = await client(server);
    c.send({ type: 'join', token: forged, protocol: 1 });
    const err = await c.next((m) => m.type === 'error', 5000, 'error for forged token');
    assert.equal(err.code, 'unauthorized', JSON.stringify(err));
    assert.equal(typeof err.message, 'string');
    const closed = await Promise.race([c.closed, new Promise((r) => setTimeout(() => r(null), 5000))]);
    assert.ok(closed, 'the socket is closed after unauthorized');
  }
  // Forged token 2: signed with a key of our own; token 3: alg "none".
  {
    const now = Math.floor(Date.now() / 1000);
    const claims = { iss: 'switchboard', sub: 'eve', nbf: now - 10, exp: now + 3600, video: { room: 'victim', roomJoin: true, canPublish: true, canSubscribe: true, canPublishData: true } };
    const crypto = await import('node:crypto');
    const head = b64u({ alg: 'HS256', typ: 'JWT' });
    const body = b64u(claims);
    const sig = crypto.createHmac('sha256', 'not-the-server-secret').update(`${head}.${body}`).digest('base64url');
    for (const token of [`${head}.${body}.${sig}`, `${b64u({ alg: 'none', typ: 'JWT' })}.${body}.`, 'not-a-jwt']) {
      const c = await client(server);
      c.send({ type: 'join', token, protocol: 1 });
      const err = await c.next((m) => m.type === 'error' || m.type === 'joined', 5000, 'error for a bad token');
      assert.equal(err.type, 'error', `a forged token was accepted: ${token.slice(0, 40)}…`);
      assert.equal(err.code, 'unauthorized', JSON.stringify(err));
    }
  }

  const { c: joinedClient } = await joinRaw(server, 'robust', 'Rita');

  // Oversize message (protocol: 64 KiB limit): error too_large, socket stays open.
  joinedClient.send({ type: 'update', metadata: { blob: 'x'.repeat(70 * 1024) } });
  const big = await joinedClient.next((m) => m.type === 'error', 5000, 'error for an oversize message');
  assert.equal(big.code, 'too_large', JSON.stringify(big));
  await assertAlive(joinedClient, 'after too_large');

  // Junk JSON: error bad_request, socket stays open.
  joinedClient.send('{"type": "offer", this is not json');
  const junk = await joinedClient.next((m) => m.type === 'error', 5000, 'error for junk JSON');
  assert.equal(junk.code, 'bad_request', JSON.stringify(junk));
  await assertAlive(joinedClient, 'after bad_request');
  // Valid JSON, unknown type; and a field of the wrong type.
  joinedClient.send({ type: 'teleport' });
  assert.equal((await joinedClient.next((m) => m.type === 'error', 5000, 'error for unknown type')).code, 'bad_request');
  joinedClient.send({ type: 'offer', to: 42, sdp: ['no'] });
  assert.equal((await joinedClient.next((m) => m.type === 'error', 5000, 'error for wrong-typed fields')).code, 'bad_request');
  await assertAlive(joinedClient, 'after unknown type');

  // Junk before join.
  {
    const c = await client(server);
    c.send('\u0000\u0001 garbage');
    const err = await c.next((m) => m.type === 'error', 5000, 'error for junk before join');
    assert.ok(['bad_request', 'not_joined'].includes(err.code), JSON.stringify(err));
  }

  // The server is still up: /healthz, and a new participant (a browser) joins the raw client's room and gets media
  // from another browser participant.
  assert.equal((await httpGet(server, '/healthz')).status, 200);
  const browser = await h.launchBrowser();
  const a = await h.join(browser, server, 'after-abuse', 'Alice');
  const b = await h.join(browser, server, 'after-abuse', 'Bob');
  await waitForMediaFrom(a.page, [b.id]);
  await assertAlive(joinedClient, 'at the end');
});
