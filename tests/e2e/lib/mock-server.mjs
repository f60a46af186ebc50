// A stand-in for `switchboard serve`, for developing the web client while the Rust server is not ready.
// NOT what the e2e suite tests: the harness only uses it when SWITCHBOARD_MOCK=1 is set explicitly.
//
// Implements the subset of docs/protocol.md the browser needs: GET / , /room/<name>, /app/*, /sdk/*, /healthz,
// /dev/token, and the /ws signaling endpoint (join/resume, offer/answer/candidate relay, update, leave, ping,
// errors: bad_request, too_large, not_joined, already_joined, unauthorized, unknown_participant).
// With TURN_SECRET + TURN_PORT set it hands out TURN REST credentials for a coturn started by the caller.
//
// Usage: node tests/e2e/lib/mock-server.mjs --http 127.0.0.1:0
import http from 'node:http';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { WebSocketServer } from 'ws';

const here = path.dirname(fileURLToPath(import.meta.url));
const webRoot = path.resolve(here, '../../../web');
const secret = crypto.randomBytes(32);
const argv = process.argv.slice(2);
const httpArg = argv[argv.indexOf('--http') + 1] || '127.0.0.1:8080';
const [host, portStr] = httpArg.split(':');
const MAX = 64 * 1024;
const GRACE = 20000;

const b64u = (buf) => Buffer.from(buf).toString('base64url');
function sign(claims) {
  const head = b64u(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64u(JSON.stringify(claims));
  const sig = b64u(crypto.createHmac('sha256', secret).update(`${head}.${body}`).digest());
  return `${head}.${body}.${sig}`;
}
function verify(token) {
  const parts = String(token || '').split('.');
  if (parts.length !== 3) return null;
  const sig = b64u(crypto.createHmac('sha256', secret).update(`${parts[0]}.${parts[1]}`).digest());
  if (sig !== parts[2]) return null;
  try {
    const c = JSON.parse(Buffer.from(parts[1], 'base64url').toString());
    if (c.exp && c.exp < Date.now() / 1000) return null;
    if (!c.video || !c.video.room) return null;
    return c;
  } catch (_) {
    return null;
  }
}

const types = { '.js': 'text/javascript', '.mjs': 'text/javascript', '.css': 'text/css', '.html': 'text/html; charset=utf-8', '.ts': 'text/plain' };
function serveFile(res, file) {
  fs.readFile(file, (err, data) => {
    if (err) {
      res.writeHead(404).end('not found');
      return;
    }
    res.writeHead(200, { 'content-type': types[path.extname(file)] || 'application/octet-stream', 'cache-control': 'no-store' }).end(data);
  });
}

const server = http.createServer((req, res) => {
  const u = new URL(req.url, 'http://x');
  if (u.pathname === '/healthz') return res.writeHead(200).end('ok');
  if (u.pathname === '/dev/token') {
    const room = u.searchParams.get('room');
    const name = u.searchParams.get('name') || 'guest';
    if (!room) return res.writeHead(400).end('room required');
    const identity = `${name.toLowerCase().replace(/[^a-z0-9]/g, '') || 'guest'}-${crypto.randomBytes(3).toString('hex')}`;
    const now = Math.floor(Date.now() / 1000);
    const token = sign({ iss: 'switchboard', sub: identity, name, nbf: now - 5, exp: now + 6 * 3600, video: { room, roomJoin: true, canPublish: true, canSubscribe: true, canPublishData: true } });
    return res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ token, identity }));
  }
  if (u.pathname === '/' || /^\/room\/[^/]+\/?$/.test(u.pathname)) return serveFile(res, path.join(webRoot, 'app/index.html'));
  const m = u.pathname.match(/^\/(app|sdk)\/([A-Za-z0-9_.-]+)$/);
  if (m) return serveFile(res, path.join(webRoot, m[1], m[2]));
  res.writeHead(404).end('not found');
});

const rooms = new Map(); // name -> Map(id -> session)
const resumable = new Map(); // resume token -> session
const wss = new WebSocketServer({ server, path: '/ws', maxPayload: 1024 * 1024 });

function info(s) {
  return { id: s.id, identity: s.identity, name: s.name, metadata: s.metadata };
}
function broadcast(room, msg, exceptId) {
  for (const s of rooms.get(room)?.values() || []) if (s.id !== exceptId && s.ws) s.ws.send(JSON.stringify(msg));
}
function removeSession(s, reason) {
  const r = rooms.get(s.room);
  if (!r || r.get(s.id) !== s) return;
  r.delete(s.id);
  resumable.delete(s.resumeToken);
  clearTimeout(s.graceTimer);
  broadcast(s.room, { type: 'participant_left', id: s.id, reason });
}

wss.on('connection', (ws) => {
  let s = null;
  const err = (code, message, close) => {
    ws.send(JSON.stringify({ type: 'error', code, message }));
    if (close) ws.close(1008, code);
  };
  ws.on('message', (raw, isBinary) => {
    if (isBinary) return err('bad_request', 'binary frames are not accepted');
    if (raw.length > MAX) return err('too_large', `message over ${MAX} bytes`);
    let msg;
    try {
      msg = JSON.parse(raw.toString());
    } catch (_) {
      return err('bad_request', 'malformed JSON');
    }
    if (!msg || typeof msg.type !== 'string') return err('bad_request', 'missing "type"');
    if (!s && msg.type !== 'join') return err('not_joined', 'send join first');
    switch (msg.type) {
      case 'join': {
        if (s) return err('already_joined', 'already joined');
        if (msg.protocol !== 1) return err('unsupported_protocol', 'protocol must be 1', true);
        const c = verify(msg.token);
        if (!c) return err('unauthorized', 'bad token', true);
        if (msg.resume_token) {
          const old = resumable.get(msg.resume_token);
          if (!old || old.identity !== c.sub) return err('unauthorized', 'bad resume token', true);
          s = old;
          clearTimeout(s.graceTimer);
          try { s.ws?.close(); } catch (_) { /* ignore */ }
          s.ws = ws;
          resumable.delete(s.resumeToken);
          s.resumeToken = crypto.randomBytes(16).toString('hex');
          resumable.set(s.resumeToken, s);
          ws.send(JSON.stringify(joined(s, true)));
          return;
        }
        if (!rooms.has(c.video.room)) rooms.set(c.video.room, new Map());
        const r = rooms.get(c.video.room);
        for (const other of r.values()) if (other.identity === c.sub) { other.ws?.close(); removeSession(other, 'replaced'); }
        s = { id: `p_${crypto.randomBytes(4).toString('hex')}`, identity: c.sub, name: c.name || c.sub, metadata: msg.metadata || {}, room: c.video.room, ws, resumeToken: crypto.randomBytes(16).toString('hex') };
        resumable.set(s.resumeToken, s);
        const resp = joined(s, false);
        r.set(s.id, s);
        ws.send(JSON.stringify(resp));
        broadcast(s.room, { type: 'participant_joined', participant: info(s) }, s.id);
        return;
      }
      case 'offer':
      case 'answer':
      case 'candidate': {
        if (typeof msg.to !== 'string' || (msg.type !== 'candidate' && typeof msg.sdp !== 'string')) return err('bad_request', 'wrong-typed field');
        const to = rooms.get(s.room)?.get(msg.to);
        if (!to) return err('unknown_participant', `no ${msg.to} in this room`);
        const out = { ...msg, from: s.id };
        delete out.to;
        to.ws?.send(JSON.stringify(out));
        return;
      }
      case 'update':
        if (typeof msg.name === 'string') s.name = msg.name;
        if (msg.metadata && typeof msg.metadata === 'object') s.metadata = msg.metadata;
        broadcast(s.room, { type: 'participant_updated', participant: info(s) });
        return;
      case 'leave':
        removeSession(s, 'left');
        s.ws = null;
        s = null;
        ws.close(1000);
        return;
      case 'ping':
        ws.send(JSON.stringify({ type: 'pong', ts: msg.ts }));
        return;
      default:
        return err('bad_request', `unknown type ${msg.type}`);
    }
  });
  ws.on('close', () => {
    if (!s || s.ws !== ws) return;
    s.ws = null;
    const sess = s;
    sess.graceTimer = setTimeout(() => removeSession(sess, 'timeout'), GRACE);
  });
});

function joined(s, resumed) {
  const iceServers = [];
  if (process.env.TURN_SECRET && process.env.TURN_PORT) {
    const username = `${Math.floor(Date.now() / 1000) + 3600}:${s.id}`;
    const credential = crypto.createHmac('sha1', process.env.TURN_SECRET).update(username).digest('base64');
    iceServers.push({ urls: [`stun:127.0.0.1:${process.env.TURN_PORT}`] });
    iceServers.push({ urls: [`turn:127.0.0.1:${process.env.TURN_PORT}?transport=udp`, `turn:127.0.0.1:${process.env.TURN_PORT}?transport=tcp`], username, credential });
  }
  return {
    type: 'joined', protocol: 1, participant: info(s), room: { name: s.room, mode: 'mesh' },
    participants: [...rooms.get(s.room).values()].filter((o) => o.id !== s.id).map(info),
    ice_servers: iceServers, resume_token: s.resumeToken, resumed, reconnect_grace_ms: GRACE,
    permissions: { can_publish: true, can_subscribe: true, can_publish_data: true },
  };
}

server.listen(Number(portStr || 0), host, () => {
  console.log(`listening http http://${host}:${server.address().port}`);
});
