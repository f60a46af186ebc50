// Simulcast in an sfu room: the SDK publishes three VP8 layers (rid q/h/f at 1/4, 1/2 and full resolution); the
// SFU forwards one per subscriber, chosen from the subscriber's requested quality (`setSubscribeQuality`, the
// `subscribe_quality` control message of docs/protocol.md), switching on a keyframe with continuous timestamps.
// A subscriber asking for low gets the small layer, then asking for high gets the large one, and frames keep
// decoding throughout (no stall of the decoder while switching).
//
// Run: cargo build -p switchboard && node --test --test-concurrency=1 tests/sfu/simulcast.test.mjs
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { Harness, waitForMediaFrom, httpGet } from '../e2e/lib/harness.mjs';
import { joinSdk } from './lib.mjs';
import { metric } from './lib.mjs';

const h = new Harness();
after(() => h.close());

process.env.SWITCHBOARD_SFU_ENABLED = 'true';

/** Samples the subscriber's decoded video from `pubId` every 250 ms while `fn` runs. */
async function sampling(page, pubId, fn) {
  await page.evaluate((pubId) => {
    window.__samples = [];
    window.__sampler = setInterval(async () => {
      const s = (await window.switchboardApp.room.getStats())[pubId];
      if (s) window.__samples.push({ t: Date.now(), frames: s.video.framesDecoded, width: s.video.frameWidth, height: s.video.frameHeight });
    }, 250);
  }, pubId);
  try {
    await fn();
  } finally {
    await page.evaluate(() => clearInterval(window.__sampler));
  }
  return page.evaluate(() => window.__samples);
}

/** Polls the subscriber's decoded frame width from `pubId` until `pred(width)`; returns the width. */
async function waitWidth(page, pubId, pred, what, timeout = 30000) {
  const deadline = Date.now() + timeout;
  let w = 0;
  for (;;) {
    w = await page.evaluate(async (id) => (await window.switchboardApp.room.getStats())[id]?.video.frameWidth ?? 0, pubId);
    if (pred(w)) return w;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what} (frame width ${w})`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** Mime types of the codecs of a page's video RTP streams of `type` ('outbound-rtp' | 'inbound-rtp') on its SFU link. */
function videoCodecs(page, type) {
  return page.evaluate(async (type) => {
    const stats = await window.switchboardApp.room.sfu.pc.getStats();
    const out = [];
    stats.forEach((s) => {
      if (s.type === type && s.kind === 'video' && s.codecId && stats.get(s.codecId)) out.push(stats.get(s.codecId).mimeType);
    });
    return [...new Set(out)];
  }, type);
}

/**
 * A publisher (1280x720, three layers in `codec`, or the browser's default) and a viewer: the viewer gets the best
 * layer by default, the small one after asking for low, the large one after asking for high, decoding throughout.
 */
async function simulcastSwitch(room, codec) {
  process.env.SWITCHBOARD_ROOMS_DEFAULT_MODE = 'sfu';
  const server = await h.startServer();
  const browser = await h.launchBrowser();
  const roomOptions = codec ? { videoCodec: codec } : {};
  const pub = await joinSdk(browser, server, room, 'Publisher', { width: 1280, height: 720, frameRate: 15, roomOptions });
  const sub = await joinSdk(browser, server, room, 'Viewer', { width: 160, height: 120, frameRate: 10, roomOptions });
  await waitForMediaFrom(sub.page, [pub.id], { timeout: 40000, what: 'the viewer decoding the publisher' });
  const encodings = await pub.page.evaluate(() => window.switchboardApp.room.sfu.pc.getSenders().filter((s) => s.track?.kind === 'video').map((s) => s.getParameters().encodings.map((e) => e.rid)));
  assert.deepEqual(encodings, [['q', 'h', 'f']], 'the publisher sends three layers');
  // By default a subscriber gets the best layer.
  const first = await waitWidth(sub.page, pub.id, (w) => w >= 640, 'default (high) layer');

  const samples = await sampling(sub.page, pub.id, async () => {
    await sub.page.evaluate((id) => window.switchboardApp.room.setSubscribeQuality('low', id), pub.id);
    const low = await waitWidth(sub.page, pub.id, (w) => w > 0 && w <= 400, 'the low layer after asking for low');
    await sub.page.waitForTimeout(3000);
    await sub.page.evaluate((id) => window.switchboardApp.room.setSubscribeQuality('high', id), pub.id);
    const high = await waitWidth(sub.page, pub.id, (w) => w >= 640, 'the high layer after asking for high');
    await sub.page.waitForTimeout(3000);
    console.log(`# frame width: default ${first}, low ${low}, high ${high}`);
    assert.ok(high >= 2 * low, `high (${high}) is at least twice as wide as low (${low})`);
  });
  // Decoding never stalls for long while switching.
  let worst = 0;
  for (let i = 1; i < samples.length; i++) {
    if (samples[i].frames > samples[i - 1].frames) continue;
    let j = i;
    while (j < samples.length && samples[j].frames <= samples[i - 1].frames) j++;
    worst = Math.max(worst, (samples[Math.min(j, samples.length - 1)].t - samples[i - 1].t));
  }
  const widths = [...new Set(samples.map((s) => s.width))];
  console.log(`# ${samples.length} samples, widths seen ${widths.join(', ')}, frames ${samples[0].frames} → ${samples.at(-1).frames}, longest stall ${worst} ms`);
  assert.ok(samples.at(-1).frames - samples[0].frames > 50, 'frames decoded throughout');
  assert.ok(worst <= 1500, `the decoder stalled for ${worst} ms`);
  const m = (await httpGet(server, '/metrics')).body;
  assert.ok(metric(m, 'sfu_rtp_packets_in_total', { kind: 'video' }) > 0);
  const sent = await videoCodecs(pub.page, 'outbound-rtp');
  const got = await videoCodecs(sub.page, 'inbound-rtp');
  console.log(`# codecs: publisher sends ${sent.join(', ')}, viewer decodes ${got.join(', ')}`);
  return { sent, got, browser };
}

test('simulcast: a subscriber asking for low gets the small layer, then high gets the large one, frames decoding throughout', { timeout: 180000 }, async () => {
  const { sent, got, browser } = await simulcastSwitch('simulcast', null);
  assert.deepEqual(sent, ['video/VP8'], 'Chromium publishes VP8 by default');
  assert.deepEqual(got, ['video/VP8']);
  await browser.close();
});

test('simulcast in H.264 (videoCodec: "h264"): the same layer switching, the viewer decodes H.264', { timeout: 180000 }, async () => {
  const { sent, got, browser } = await simulcastSwitch('simulcast-h264', 'h264');
  assert.deepEqual(sent, ['video/H264'], 'the publisher sends H.264 layers');
  assert.deepEqual(got, ['video/H264'], 'the viewer receives and decodes H.264');
  await browser.close();
});

for (const [codec, mime] of [['vp9', 'video/VP9'], ['av1', 'video/AV1']]) {
  test(`simulcast in ${mime.slice(6)} (videoCodec: "${codec}"): the same layer switching, the viewer decodes ${mime.slice(6)}`, { timeout: 180000 }, async () => {
    const { sent, got, browser } = await simulcastSwitch(`simulcast-${codec}`, codec);
    assert.deepEqual(sent, [mime], `the publisher sends ${mime} layers`);
    assert.deepEqual(got, [mime], `the viewer receives and decodes ${mime}`);
    await browser.close();
  });
}

test('tiles drive subscriptions: a small tile gets the small layer, a hidden one nothing, a large one asks for high and gets a larger layer', { timeout: 180000 }, async () => {
  process.env.SWITCHBOARD_ROOMS_DEFAULT_MODE = 'sfu';
  const server = await h.startServer();
  const browser = await h.launchBrowser();
  const pub = await joinSdk(browser, server, 'tiles', 'Publisher', { width: 1280, height: 720, frameRate: 15 });
  const sub = await joinSdk(browser, server, 'tiles', 'Viewer', { width: 160, height: 120, frameRate: 10 });
  await waitForMediaFrom(sub.page, [pub.id], { timeout: 40000, what: 'the viewer decoding the publisher' });
  await waitWidth(sub.page, pub.id, (w) => w >= 640, 'the default (high) layer before any tile is watched');
  const frames = () => sub.page.evaluate(async (id) => (await window.switchboardApp.room.getStats())[id]?.video.framesDecoded ?? 0, pub.id);
  // The harness shows each stream in an 80 px wide <video>: watch it as the publisher's tile.
  await sub.page.evaluate((id) => {
    const el = [...document.querySelectorAll('video[data-key]')].find((v) => v.dataset.key.startsWith(`${id}/`) && v.srcObject?.getVideoTracks().length);
    window.__tile = el;
    window.__stop = window.switchboardApp.room.observeTile(id, el);
  }, pub.id);
  const small = await waitWidth(sub.page, pub.id, (w) => w > 0 && w <= 400, 'the small layer for an 80 px tile');

  // Hidden tile: the SFU stops forwarding the video (no renegotiation), decoding stops.
  await sub.page.evaluate(() => { window.__tile.style.display = 'none'; });
  await new Promise((r) => setTimeout(r, 1500));
  const f0 = await frames();
  await new Promise((r) => setTimeout(r, 3000));
  const f1 = await frames();
  assert.ok(f1 - f0 <= 2, `no video while the tile is hidden (${f1 - f0} frames in 3 s)`);

  // Shown again and large: the full layer, decoding again.
  await sub.page.evaluate(() => { window.__tile.style.display = ''; window.__tile.width = 900; });
  // The SDK steps up while the tile is wider than the video it shows: to `high`, the full layer (1280 wide) when
  // the publisher sends it (a CPU-starved publisher may pause it: then its best layer, still well above small).
  const large = await waitWidth(sub.page, pub.id, (w) => w >= 2 * small, 'a larger layer for a 900 px tile');
  await sub.page.waitForFunction((id) => window.switchboardApp.room._tileWishes.get(id)?.wish === 'high', pub.id, { timeout: 20000 });
  const f2 = await frames();
  await new Promise((r) => setTimeout(r, 2000));
  const f3 = await frames();
  console.log(`# tile 80 px: width ${small}; hidden: ${f1 - f0} frames in 3 s; 900 px: width ${large}, ${f3 - f2} frames in 2 s`);
  assert.ok(f3 - f2 > 10, `decoding again after the tile is shown (${f3 - f2} frames in 2 s)`);
});
