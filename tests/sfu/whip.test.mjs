// WHIP (RFC 9725) and WHEP through the SFU: a Chromium page publishes with plain fetch + RTCPeerConnection,
// trickles its candidates by PATCH, another views with WHEP and decodes; a participant of the sfu room sees the
// WHIP publisher too; DELETE ends a session; bad tokens are refused. Then aiortc (an independent WebRTC stack)
// publishes by WHIP to a Chromium WHEP viewer, and the reverse: Chromium publishes by WHIP and aiortc views by WHEP,
// decoding the frames with its own decoder (tests/sfu/aiortc_whep.py).
//
// Run: cargo build -p switchboard && node --test --test-concurrency=1 tests/sfu/
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Harness, until, sleep, withTimeout, waitForMediaFrom, mediaGrowth, httpGet } from '../e2e/lib/harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
process.env.SWITCHBOARD_SFU_ENABLED = 'true';
process.env.SWITCHBOARD_ROOMS_DEFAULT_MODE = 'sfu';

const h = new Harness();
const children = [];
after(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await h.close();
});

async function token(server, room, name) {
  const r = await httpGet(server, `/dev/token?room=${encodeURIComponent(room)}&name=${encodeURIComponent(name)}`);
  assert.equal(r.status, 200, r.body);
  return JSON.parse(r.body).token;
}

async function blankPage(browser, server) {
  const context = await browser.newContext({ permissions: ['camera', 'microphone'] });
  const page = await context.newPage();
  await page.goto(`${server.url}/healthz`);
  return page;
}

/** In the page: publish camera+mic by WHIP. Returns {status, location}. */
function whipPublish(page, room, tok) {
  return page.evaluate(async ({ room, tok }) => {
    const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: true });
    const pc = new RTCPeerConnection();
    for (const t of stream.getTracks()) pc.addTransceiver(t, { direction: 'sendonly', streams: [stream] });
    await pc.setLocalDescription(await pc.createOffer());
    const res = await fetch(`/whip/${encodeURIComponent(room)}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/sdp', Authorization: `Bearer ${tok}` },
      body: pc.localDescription.sdp,
    });
    const body = await res.text();
    if (res.status !== 201) return { status: res.status, body };
    await pc.setRemoteDescription({ type: 'answer', sdp: body });
    window.whip = { pc, location: res.headers.get('Location') };
    return { status: res.status, location: res.headers.get('Location'), contentType: res.headers.get('Content-Type') };
  }, { room, tok });
}

/** In the page: view by WHEP (recvonly audio + video). */
function whepView(page, room, tok) {
  return page.evaluate(async ({ room, tok }) => {
    const pc = new RTCPeerConnection();
    pc.addTransceiver('video', { direction: 'recvonly' });
    pc.addTransceiver('audio', { direction: 'recvonly' });
    const video = document.createElement('video');
    video.autoplay = true;
    video.muted = true;
    document.body.append(video);
    const stream = new MediaStream();
    pc.ontrack = (ev) => {
      stream.addTrack(ev.track);
      video.srcObject = stream;
    };
    await pc.setLocalDescription(await pc.createOffer());
    const res = await fetch(`/whep/${encodeURIComponent(room)}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/sdp', Authorization: `Bearer ${tok}` },
      body: pc.localDescription.sdp,
    });
    const body = await res.text();
    if (res.status !== 201) return { status: res.status, body };
    await pc.setRemoteDescription({ type: 'answer', sdp: body });
    window.whep = { pc, location: res.headers.get('Location') };
    return { status: res.status, location: res.headers.get('Location') };
  }, { room, tok });
}

function whepCounters(page) {
  return page.evaluate(async () => {
    const out = { framesDecoded: 0, totalSamplesReceived: 0, state: window.whep.pc.connectionState };
    (await window.whep.pc.getStats()).forEach((s) => {
      if (s.type !== 'inbound-rtp') return;
      if (s.kind === 'video') out.framesDecoded += s.framesDecoded || 0;
      if (s.kind === 'audio') out.totalSamplesReceived += s.totalSamplesReceived || 0;
    });
    return out;
  });
}

/**
 * Waits until the viewer decodes more than 5 video frames (and new audio samples) beyond `since` (counters taken
 * earlier, e.g. before a publisher switch), then checks that decoding keeps going for 2 s. Returns the
 * counters and how long the first new frame took.
 */
async function waitWhepMedia(page, what, { audio = true, timeout = 30000, since = null } = {}) {
  const base = since || { framesDecoded: 0, totalSamplesReceived: 0 };
  const t0 = Date.now();
  const first = await until(async () => {
    const c = await whepCounters(page);
    return c.framesDecoded > base.framesDecoded + 5 && (!audio || c.totalSamplesReceived > base.totalSamplesReceived) && c;
  }, { timeout, interval: 100, what });
  const waited = Date.now() - t0;
  await sleep(2000);
  const second = await whepCounters(page);
  assert.ok(second.framesDecoded - first.framesDecoded > 5, `${what}: frames stalled (${first.framesDecoded} → ${second.framesDecoded})`);
  return { ...second, waited };
}

test('WHIP publish from Chromium, WHEP view in Chromium, the sfu room sees it; DELETE ends it; tokens checked', { timeout: 120000 }, async () => {
  const server = await h.startServer();
  const browser = await h.launchBrowser();
  const room = 'whip-room';
  const pubTok = await token(server, room, 'obs');
  const viewTok = await token(server, room, 'viewer');

  // Refusals: no token, a token for another room, not SDP.
  const offer = 'v=0\r\n';
  let r = await fetch(`${server.url}/whip/${room}`, { method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: offer });
  assert.equal(r.status, 401, 'no token');
  r = await fetch(`${server.url}/whip/${room}`, { method: 'POST', headers: { 'Content-Type': 'application/sdp', Authorization: `Bearer ${await token(server, 'other', 'x')}` }, body: offer });
  assert.equal(r.status, 403, 'token for another room');
  r = await fetch(`${server.url}/whip/${room}`, { method: 'POST', headers: { 'Content-Type': 'text/plain', Authorization: `Bearer ${pubTok}` }, body: offer });
  assert.equal(r.status, 415, 'not application/sdp');
  r = await fetch(`${server.url}/whip/${room}`, { method: 'POST', headers: { 'Content-Type': 'application/sdp', Authorization: `Bearer ${pubTok}` }, body: offer });
  assert.equal(r.status, 400, 'bad SDP');

  const pub = await blankPage(browser, server);
  const p = await whipPublish(pub, room, pubTok);
  assert.equal(p.status, 201, JSON.stringify(p));
  assert.match(p.location, /^\/whip\/whip-room\/[0-9a-f]+$/);
  assert.equal(p.contentType, 'application/sdp');
  await pub.waitForFunction(() => window.whip.pc.connectionState === 'connected', null, { timeout: 20000 });

  // Trickle ICE by PATCH (RFC 9725 §4.3): the publisher's candidates in an SDP fragment → 204; new ICE
  // credentials (an ICE restart) → 422; wrong type → 415; no token → 401; an unknown session → 404.
  const patch = await pub.evaluate(async (tok) => {
    const sdp = window.whip.pc.localDescription.sdp;
    const ufrag = sdp.match(/a=ice-ufrag:(\S+)/)[1];
    const pwd = sdp.match(/a=ice-pwd:(\S+)/)[1];
    const cands = sdp.split(/\r?\n/).filter((l) => l.startsWith('a=candidate:'));
    const frag = (u, p) => `a=ice-ufrag:${u}\r\na=ice-pwd:${p}\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n${cands.join('\r\n')}\r\na=end-of-candidates\r\n`;
    const send = async (body, type = 'application/trickle-ice-sdpfrag', auth = true, url = window.whip.location) => (await fetch(url, {
      method: 'PATCH',
      headers: { 'Content-Type': type, ...(auth ? { Authorization: `Bearer ${tok}` } : {}) },
      body,
    })).status;
    return {
      candidates: cands.length,
      trickle: await send(frag(ufrag, pwd)),
      restart: await send(frag('newufrag', 'newpassword0123456789012')),
      type: await send(frag(ufrag, pwd), 'application/sdp'),
      noToken: await send(frag(ufrag, pwd), 'application/trickle-ice-sdpfrag', false),
      unknown: await send(frag(ufrag, pwd), 'application/trickle-ice-sdpfrag', true, window.whip.location.replace(/[0-9a-f]+$/, '0000')),
    };
  }, pubTok);
  assert.deepEqual(patch, { candidates: patch.candidates, trickle: 204, restart: 422, type: 415, noToken: 401, unknown: 404 }, JSON.stringify(patch));
  assert.equal(await pub.evaluate(() => window.whip.pc.connectionState), 'connected', 'the session survives the PATCHes');

  const viewer = await blankPage(browser, server);
  const v = await whepView(viewer, room, viewTok);
  assert.equal(v.status, 201, JSON.stringify(v));
  assert.match(v.location, /^\/whep\/whip-room\/[0-9a-f]+$/);
  await waitWhepMedia(viewer, 'WHEP viewer decoding the WHIP publisher');

  // A participant of the sfu room gets the WHIP publisher's tracks, attributed to the WHIP session.
  const alice = await h.join(browser, server, room, 'Alice');
  const whipId = `whip_${p.location.split('/').pop()}`;
  await waitForMediaFrom(alice.page, [whipId], { timeout: 30000, what: 'room participant receiving the WHIP publisher' });
  const tiles = await alice.page.evaluate(() => document.querySelectorAll('#grid .tile').length);
  assert.ok(tiles >= 2, `a tile for the WHIP publisher (tiles: ${tiles})`);

  // DELETE with the token ends the publisher: it leaves the SFU and the room participant drops its tracks.
  const gauge = async () => Number(((await httpGet(server, '/metrics')).body.match(/^sfu_participants (\S+)/m) || [])[1]);
  assert.equal(await gauge(), 3, 'WHIP publisher, WHEP viewer and Alice');
  const del = await pub.evaluate(async (tok) => (await fetch(window.whip.location, { method: 'DELETE', headers: { Authorization: `Bearer ${tok}` } })).status, pubTok);
  assert.equal(del, 200);
  const again = await pub.evaluate(async (tok) => (await fetch(window.whip.location, { method: 'DELETE', headers: { Authorization: `Bearer ${tok}` } })).status, pubTok);
  assert.equal(again, 404, 'a deleted session is gone');
  assert.equal(await gauge(), 2);
  await alice.page.waitForFunction((id) => !window.switchboardApp.room.participants.has(id), whipId, { timeout: 15000 });
  // The WHEP viewer is fed from the room's remaining publisher (Alice) instead: its counters grow again
  // after the old publisher's last frames (taken 300 ms after the leave was seen).
  await sleep(300);
  const beforeSwitch = await whepCounters(viewer);
  const switched = await waitWhepMedia(viewer, 'WHEP viewer switched to the next publisher', { since: beforeSwitch, timeout: 10000 });
  console.log(`# WHEP viewer decoded the next publisher's media ${switched.waited} ms after the leave`);
  await h.close();
});

test('aiortc publishes by WHIP; a Chromium WHEP viewer (who came first) decodes it', { timeout: 120000 }, async () => {
  const server = await h.startServer();
  const browser = await h.launchBrowser();
  const room = 'aiortc-room';
  // The viewer first: its m-lines are fed once a publisher appears.
  const viewer = await blankPage(browser, server);
  const v = await whepView(viewer, room, await token(server, room, 'viewer'));
  assert.equal(v.status, 201, JSON.stringify(v));

  const tok = await token(server, room, 'aiortc');
  const out = [];
  const py = spawn('python3', [path.join(here, 'aiortc_whip.py'), `${server.url}/whip/${room}`, tok, '30'], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(py);
  py.stdout.on('data', (d) => out.push(d.toString()));
  py.stderr.on('data', (d) => out.push(d.toString()));
  try {
    await until(() => out.join('').includes('connected'), { timeout: 30000, what: 'aiortc connected' });
    await waitWhepMedia(viewer, 'WHEP viewer decoding aiortc', { timeout: 30000 });
  } catch (err) {
    throw new Error(`${err.message}\naiortc:\n${out.join('')}\nserver:\n${server.log.slice(-30).join('\n')}`);
  }
  py.kill('SIGTERM');
  await h.close();
});

test('Chromium publishes by WHIP; an aiortc WHEP viewer decodes ≥ 30 of its video frames within 10 s', { timeout: 120000 }, async () => {
  const server = await h.startServer();
  const browser = await h.launchBrowser();
  const room = 'aiortc-whep-room';
  const pub = await blankPage(browser, server);
  const p = await whipPublish(pub, room, await token(server, room, 'chromium'));
  assert.equal(p.status, 201, JSON.stringify(p));
  await pub.waitForFunction(() => window.whip.pc.connectionState === 'connected', null, { timeout: 20000 });

  const seconds = 10;
  const out = [];
  const py = spawn('python3', [path.join(here, 'aiortc_whep.py'), `${server.url}/whep/${room}`, await token(server, room, 'aiortc'), String(seconds)], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(py);
  py.stdout.on('data', (d) => out.push(d.toString()));
  py.stderr.on('data', (d) => out.push(d.toString()));
  const exited = new Promise((resolve) => py.on('exit', (code, signal) => resolve({ code, signal })));
  let result;
  try {
    await until(() => out.join('').includes('connected'), { timeout: 30000, what: 'aiortc connected' });
    const exit = await withTimeout(exited, (seconds + 20) * 1000, 'aiortc viewer exits');
    const line = out.join('').split('\n').find((l) => l.startsWith('result '));
    assert.ok(line, `aiortc printed a result (exit ${JSON.stringify(exit)})`);
    result = JSON.parse(line.slice('result '.length));
    assert.equal(exit.code, 0, `aiortc exit ${JSON.stringify(exit)}`);
  } catch (err) {
    throw new Error(`${err.message}\naiortc:\n${out.join('')}\nserver:\n${server.log.slice(-30).join('\n')}`);
  }
  const sent = await pub.evaluate(async () => {
    let framesEncoded = 0;
    (await window.whip.pc.getStats()).forEach((s) => {
      if (s.type === 'outbound-rtp' && s.kind === 'video') framesEncoded += s.framesEncoded || 0;
    });
    return framesEncoded;
  });
  console.log(`# aiortc decoded ${result.frames} video frames in ${seconds} s (sizes ${JSON.stringify(result.sizes)}, ${result.distinct} distinct pictures, first ${result.first_frame_s} s after connecting), ${result.audio_frames} audio frames; Chromium encoded ${sent} frames in all`);
  assert.ok(result.frames >= 30, `aiortc decoded ${result.frames} frames in ${seconds} s (want ≥ 30)`);
  for (const size of Object.keys(result.sizes)) {
    const [w, hgt] = size.split('x').map(Number);
    assert.ok(w > 0 && hgt > 0 && w <= 640 && hgt <= 480, `decoded frame size ${size} (published at most 640x480)`);
  }
  assert.ok(result.distinct >= 10, `the decoded picture moves (${result.distinct} distinct of ${result.frames})`);
  assert.ok(result.audio_frames > 0, 'aiortc received audio too');
  await h.close();
});
