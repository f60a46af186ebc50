// Round-trip time of small messages between two browser peers (headless Chromium, same machine) over:
//   (a) direct   — a WebRTC data channel on the direct ICE path (host candidates),
//   (b) turn     — a data channel forced through Switchboard's TURN relay (iceTransportPolicy 'relay'),
//   (c) signaling — the signaling server's relay: A sends `update` (metadata {bench_ping: n}), the server
//                   broadcasts `participant_updated` to B, B answers with its own `update` ({bench_pong: n}),
//                   and the server's broadcast back to A closes the round trip. The protocol has no
//                   peer-to-peer echo message, and `update` is the only client message the server fans out
//                   without SDP semantics, so this measures the server's relay of a tiny message both ways.
// Each mode: 200 round trips, one in flight, paced at 20 per second (the signaling rate limit is 50 msg/s).
// Prints p50/p99, writes results.json and results.png (an SVG chart rendered in Chromium) next to this file.
//
// Usage (from the repo root, after `npm install` in tests/e2e and `cargo build -p switchboard`):
//   node bench/p2p-vs-relay/run.mjs            [SWITCHBOARD_BIN=... ROUNDS=200]
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Harness, withTimeout } from '../../tests/e2e/lib/harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const ROUNDS = Number(process.env.ROUNDS || 200);
const PACE_MS = 50;

async function openPeer(browser, server, room, name, policy) {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${server.url}/healthz`);
  const id = await page.evaluate(async ({ base, room, name, policy }) => {
    const sdk = await import(`${base}/sdk/switchboard.js`);
    const { token } = await sdk.devToken(room, name, base);
    const r = new sdk.Room(`${base}/ws`, token, { iceTransportPolicy: policy });
    window.benchRoom = r;
    // Echo side for (a)/(b): answer "ping" with "pong" on the same channel.
    r.on('data', (p, msg) => {
      if (typeof msg === 'string' && msg.startsWith('ping:')) r.sendTo(p.id, `pong:${msg.slice(5)}`);
    });
    // Echo side for (c).
    r.on('participant_updated', (p) => {
      if (!p.isLocal && p.metadata && p.metadata.bench_ping != null && p.metadata.bench_ping !== window.lastEchoed) {
        window.lastEchoed = p.metadata.bench_ping;
        r.updateMetadata({ bench_pong: p.metadata.bench_ping });
      }
    });
    await r.connect();
    return r.localParticipant.id;
  }, { base: server.url, room, name, policy });
  return { context, page, id };
}

async function waitOpen(a, b, timeout = 30000) {
  await a.page.waitForFunction((id) => window.benchRoom.peers.get(id)?.channels?.data?.readyState === 'open', b.id, { timeout });
  await b.page.waitForFunction((id) => window.benchRoom.peers.get(id)?.channels?.data?.readyState === 'open', a.id, { timeout });
}

async function measureDataChannel(a, b) {
  return a.page.evaluate(async ({ peer, rounds, pace }) => {
    const r = window.benchRoom;
    const rtts = [];
    for (let i = 0; i < rounds; i++) {
      const t0 = performance.now();
      const got = new Promise((resolve, reject) => {
        const t = setTimeout(() => { r.off('data', on); reject(new Error(`no pong ${i}`)); }, 5000);
        const on = (p, msg) => {
          if (msg === `pong:${i}`) { clearTimeout(t); r.off('data', on); resolve(); }
        };
        r.on('data', on);
      });
      r.sendTo(peer, `ping:${i}`);
      await got;
      rtts.push(performance.now() - t0);
      await new Promise((res) => setTimeout(res, Math.max(0, pace - (performance.now() - t0))));
    }
    return rtts;
  }, { peer: b.id, rounds: ROUNDS, pace: PACE_MS });
}

async function measureSignaling(a, b) {
  return a.page.evaluate(async ({ peer, rounds, pace }) => {
    const r = window.benchRoom;
    const rtts = [];
    for (let i = 0; i < rounds; i++) {
      const t0 = performance.now();
      const got = new Promise((resolve, reject) => {
        const t = setTimeout(() => { r.off('participant_updated', on); reject(new Error(`no bench_pong ${i}`)); }, 5000);
        const on = (p) => {
          if (p.id === peer && p.metadata?.bench_pong === i) { clearTimeout(t); r.off('participant_updated', on); resolve(); }
        };
        r.on('participant_updated', on);
      });
      r.updateMetadata({ bench_ping: i });
      await got;
      rtts.push(performance.now() - t0);
      await new Promise((res) => setTimeout(res, Math.max(0, pace - (performance.now() - t0))));
    }
    return rtts;
  }, { peer: b.id, rounds: ROUNDS, pace: PACE_MS });
}

function pct(sorted, p) {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

function summarize(rtts) {
  const s = [...rtts].sort((x, y) => x - y);
  return { n: s.length, p50: pct(s, 50), p90: pct(s, 90), p99: pct(s, 99), min: s[0], max: s[s.length - 1], mean: s.reduce((x, y) => x + y, 0) / s.length };
}

function chartHtml(results, subtitle) {
  const W = 900;
  const H = 420;
  const m = { l: 70, r: 20, t: 50, b: 60 };
  const modes = Object.keys(results);
  const maxV = Math.max(...modes.map((k) => results[k].summary.p99)) * 1.15 || 1;
  const bw = (W - m.l - m.r) / modes.length;
  const y = (v) => H - m.b - (v / maxV) * (H - m.t - m.b);
  const colors = { direct: '#22c55e', turn: '#f59e0b', signaling: '#3b82f6' };
  let bars = '';
  modes.forEach((k, i) => {
    const s = results[k].summary;
    const x = m.l + i * bw + bw * 0.2;
    const w = bw * 0.6;
    bars += `<rect x="${x}" y="${y(s.p50)}" width="${w}" height="${H - m.b - y(s.p50)}" fill="${colors[k] || '#888'}"/>`;
    bars += `<line x1="${x + w / 2}" x2="${x + w / 2}" y1="${y(s.p50)}" y2="${y(s.p99)}" stroke="#e5e7eb" stroke-width="2"/>`;
    bars += `<line x1="${x + w * 0.3}" x2="${x + w * 0.7}" y1="${y(s.p99)}" y2="${y(s.p99)}" stroke="#e5e7eb" stroke-width="2"/>`;
    bars += `<text x="${x + w / 2}" y="${y(s.p99) - 8}" text-anchor="middle" fill="#e5e7eb" font-size="13">p50 ${s.p50.toFixed(2)} / p99 ${s.p99.toFixed(2)} ms</text>`;
    bars += `<text x="${x + w / 2}" y="${H - m.b + 22}" text-anchor="middle" fill="#e5e7eb" font-size="15">${results[k].label}</text>`;
  });
  let ticks = '';
  for (let i = 0; i <= 5; i++) {
    const v = (maxV * i) / 5;
    ticks += `<line x1="${m.l}" x2="${W - m.r}" y1="${y(v)}" y2="${y(v)}" stroke="#374151"/><text x="${m.l - 8}" y="${y(v) + 4}" text-anchor="end" fill="#9ca3af" font-size="12">${v.toFixed(1)}</text>`;
  }
  return `<!doctype html><html><body style="margin:0;background:#111827;font-family:sans-serif">
<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}">
<text x="${W / 2}" y="28" text-anchor="middle" fill="#f9fafb" font-size="18">Round-trip time of small messages between two browser peers (bar p50, whisker p99), ms</text>
<text x="${W / 2}" y="${H - 12}" text-anchor="middle" fill="#9ca3af" font-size="12">${subtitle}</text>
${ticks}${bars}
<text x="18" y="${H / 2}" fill="#9ca3af" font-size="12" transform="rotate(-90 18 ${H / 2})" text-anchor="middle">RTT (ms)</text>
</svg></body></html>`;
}

async function main() {
  const h = new Harness();
  const deadline = setTimeout(() => {
    console.error('bench: overall deadline (5 min) hit');
    h.close().finally(() => process.exit(2));
  }, 5 * 60 * 1000);
  try {
    const server = await h.startServer();
    const browser = await h.launchBrowser();
    const results = {};

    const a1 = await openPeer(browser, server, 'bench-direct', 'A', 'all');
    const b1 = await openPeer(browser, server, 'bench-direct', 'B', 'all');
    await waitOpen(a1, b1);
    const pathA = await a1.page.evaluate((id) => window.benchRoom.getPeerStats(id).then((s) => `${s.local?.type}/${s.remote?.type}`), b1.id);
    results.direct = { label: `(a) data channel, direct (${pathA})`, rtts: await withTimeout(measureDataChannel(a1, b1), 120000, 'direct') };
    results.signaling = { label: '(c) signaling relay (update echo)', rtts: await withTimeout(measureSignaling(a1, b1), 120000, 'signaling') };
    await a1.context.close();
    await b1.context.close();

    try {
      const a2 = await openPeer(browser, server, 'bench-turn', 'A', 'relay');
      const b2 = await openPeer(browser, server, 'bench-turn', 'B', 'relay');
      await waitOpen(a2, b2);
      const pathT = await a2.page.evaluate((id) => window.benchRoom.getPeerStats(id).then((s) => `${s.local?.type}/${s.remote?.type}`), b2.id);
      results.turn = { label: `(b) data channel via TURN (${pathT})`, rtts: await withTimeout(measureDataChannel(a2, b2), 120000, 'turn') };
    } catch (err) {
      console.error(`bench: TURN mode failed: ${err.message}`);
      results.turn = { label: '(b) data channel via TURN', error: err.message, rtts: [] };
    }

    const ordered = {};
    for (const k of ['direct', 'turn', 'signaling']) {
      const r = results[k];
      ordered[k] = { ...r, summary: summarize(r.rtts) };
    }
    console.log('mode                                   n     p50 ms   p99 ms   mean ms');
    for (const [k, r] of Object.entries(ordered)) {
      const s = r.summary;
      console.log(`${r.label.padEnd(38)} ${String(s.n).padStart(4)} ${s.p50?.toFixed(3).padStart(8)} ${s.p99?.toFixed(3).padStart(8)} ${s.mean?.toFixed(3).padStart(9)}${r.error ? `  ERROR ${r.error}` : ''}`);
      void k;
    }
    const json = { date: new Date().toISOString(), rounds: ROUNDS, pace_ms: PACE_MS, server: process.env.SWITCHBOARD_MOCK === '1' ? 'mock (tests/e2e/lib/mock-server.mjs + coturn)' : 'switchboard serve', results: Object.fromEntries(Object.entries(ordered).map(([k, r]) => [k, { label: r.label, error: r.error, summary: r.summary }])) };
    fs.writeFileSync(path.join(here, 'results.json'), JSON.stringify(json, null, 2));
    const chartable = Object.fromEntries(Object.entries(ordered).filter(([, r]) => r.rtts.length > 0));
    const page = await (await browser.newContext({ viewport: { width: 900, height: 420 } })).newPage();
    await page.setContent(chartHtml(chartable, `server: ${json.server} · ${ROUNDS} round trips per mode, paced ${PACE_MS} ms · ${json.date}`));
    await page.screenshot({ path: path.join(here, 'results.png') });
    console.log(`wrote ${path.join(here, 'results.json')} and results.png`);
  } finally {
    clearTimeout(deadline);
    await h.close();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
