// Keyframe requests through the SFU (issue #4: "a PLI from a subscriber makes the publisher send a keyframe").
// A subscriber's decoder is made to lose its reference: an RTCRtpScriptTransform on its video receiver drops every
// incoming encoded frame for 1.5 s, then lets them through again. The delta frames that follow cannot be decoded
// without the dropped ones, so Chromium asks for a keyframe (RTCP PLI). The test follows that request end to end,
// with numbers: the subscriber's `pliCount` grows, the SFU counts it in (`sfu_keyframe_requests_in_total`) and
// sends one on to the publisher (`sfu_keyframe_requests_out_total`), the publisher's `pliCount` and
// `keyFramesEncoded` grow, and the subscriber decodes a keyframe and then frames again, within a bound.
// A quiet window first (nothing dropped) shows none of those counters moves on its own, so the publisher's PLI is
// the forwarded one.
// Then the rate limit: a burst of requests from the subscriber's receiver (RTCRtpScriptTransformer's
// `sendKeyFrameRequest()`) reaches the publisher as one (at most one per track and layer per 500 ms; the rest are
// counted in `sfu_keyframe_requests_throttled_total`), while requests 1 s apart each get through.
//
// Run: cargo build -p switchboard && node --test --test-concurrency=1 tests/sfu/keyframe.test.mjs
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { Harness, waitForMediaFrom, httpGet, until, sleep } from '../e2e/lib/harness.mjs';
import { joinSdk, metric } from './lib.mjs';

const h = new Harness();
after(() => h.close());

process.env.SWITCHBOARD_SFU_ENABLED = 'true';
process.env.SWITCHBOARD_ROOMS_DEFAULT_MODE = 'sfu';

/** How long the subscriber drops every incoming video frame. */
const DROP_MS = 1500;
/** Decoding must resume this soon after the drop ends. */
const RESUME_BOUND_MS = 3000;

/**
 * The worker of the receiver's RTCRtpScriptTransform: passes encoded frames through, or drops them while told to;
 * counts passed/dropped frames and keyframes, and when the first keyframe passed after a drop ended.
 */
const WORKER = `
let drop = false;
let dropEndedAt = null;
const s = { passed: 0, dropped: 0, keysPassed: 0, keysDropped: 0, firstKeyAfterDropMs: null, transform: false, requested: 0, requestErrors: [] };
let transformer = null;
onmessage = async (e) => {
  if (e.data.keyframeRequests) {
    // RTCRtpScriptTransformer.sendKeyFrameRequest(): the receiver asks its sender (the SFU) for a keyframe.
    const all = [];
    for (let i = 0; i < e.data.keyframeRequests; i++) all.push(transformer.sendKeyFrameRequest().then(() => { s.requested++; }, (err) => { s.requestErrors.push(String(err)); }));
    await Promise.all(all);
  }
  if (typeof e.data.drop === 'boolean') {
    if (drop && !e.data.drop) { dropEndedAt = performance.now(); s.firstKeyAfterDropMs = null; }
    drop = e.data.drop;
  }
  postMessage({ id: e.data.id, stats: { ...s, requestErrors: [...s.requestErrors], drop } });
};
onrtctransform = (ev) => {
  s.transform = true;
  transformer = ev.transformer;
  const { readable, writable } = ev.transformer;
  readable.pipeThrough(new TransformStream({
    transform(frame, ctl) {
      const key = frame.type === 'key';
      if (drop) {
        s.dropped++;
        if (key) s.keysDropped++;
        return;
      }
      s.passed++;
      if (key) {
        s.keysPassed++;
        if (dropEndedAt !== null && s.firstKeyAfterDropMs === null) s.firstKeyAfterDropMs = Math.round(performance.now() - dropEndedAt);
      }
      ctl.enqueue(frame);
    },
  })).pipeTo(writable);
};
`;

/**
 * Init script of the subscriber's page: every received video track gets the dropping transform as it arrives
 * (a transform set on a receiver later is not put in the path of frames already flowing), one worker per
 * receiver, reachable as `window.__kf.get(mid)`.
 */
function transformHook(code) {
  const Base = window.RTCPeerConnection;
  const byMid = new Map();
  window.__kf = { get: (mid) => byMid.get(mid) };
  window.RTCPeerConnection = class extends Base {
    constructor(...args) {
      super(...args);
      this.addEventListener('track', (ev) => {
        if (ev.track.kind !== 'video' || byMid.has(ev.transceiver.mid)) return;
        const worker = new Worker(URL.createObjectURL(new Blob([code], { type: 'text/javascript' })));
        let next = 0;
        const waiting = new Map();
        worker.onmessage = (e) => {
          waiting.get(e.data.id)?.(e.data.stats);
          waiting.delete(e.data.id);
        };
        ev.receiver.transform = new RTCRtpScriptTransform(worker, {});
        byMid.set(ev.transceiver.mid, {
          receiver: ev.receiver,
          ask: (msg) => new Promise((resolve) => {
            const id = ++next;
            waiting.set(id, resolve);
            worker.postMessage({ ...msg, id });
          }),
        });
      });
    }
  };
}

/** In the subscriber's page: picks the transformed video receiver fed by `pubId` as `window.__kf.cur`. */
function pickReceiver(page, pubId) {
  return page.evaluate((pubId) => {
    const sfu = window.switchboardApp.room.sfu;
    const tr = sfu.pc.getTransceivers().find((t) => t.mid != null && sfu.midOwner.get(t.mid) === pubId && t.receiver.track.kind === 'video');
    if (!tr) throw new Error(`no video receiver for ${pubId}`);
    window.__kf.cur = window.__kf.get(tr.mid);
    if (!window.__kf.cur) throw new Error(`no transform on mid ${tr.mid}`);
    return tr.mid;
  }, pubId);
}

/** The subscriber's inbound video counters (of the transformed receiver) and the transform's own counts. */
function subCounters(page, msg = {}) {
  return page.evaluate(async (msg) => {
    const out = { pliCount: 0, firCount: 0, framesDecoded: 0, keyFramesDecoded: 0, framesReceived: 0, t: Date.now() };
    (await window.__kf.cur.receiver.getStats()).forEach((s) => {
      if (s.type !== 'inbound-rtp' || s.kind !== 'video') return;
      for (const k of ['pliCount', 'firCount', 'framesDecoded', 'keyFramesDecoded', 'framesReceived']) out[k] += s[k] || 0;
    });
    out.transform = await window.__kf.cur.ask(msg);
    return out;
  }, msg);
}

/** The publisher's outbound video counters, per simulcast layer (rid, or '-' without simulcast). */
function pubCounters(page) {
  return page.evaluate(async () => {
    const out = {};
    (await window.switchboardApp.room.sfu.pc.getStats()).forEach((s) => {
      if (s.type !== 'outbound-rtp' || s.kind !== 'video') return;
      out[s.rid || '-'] = { pliCount: s.pliCount || 0, firCount: s.firCount || 0, keyFramesEncoded: s.keyFramesEncoded || 0, framesEncoded: s.framesEncoded || 0 };
    });
    return out;
  });
}

const sum = (per, k) => Object.values(per).reduce((a, l) => a + l[k], 0);

async function sfuCounters(server) {
  const m = (await httpGet(server, '/metrics')).body;
  return {
    in: metric(m, 'sfu_keyframe_requests_in_total'),
    out: metric(m, 'sfu_keyframe_requests_out_total'),
    throttled: metric(m, 'sfu_keyframe_requests_throttled_total'),
  };
}

/** Everything at one instant: subscriber, publisher, SFU. */
async function snapshot(server, pub, sub, msg) {
  const [s, p, f] = await Promise.all([subCounters(sub.page, msg), pubCounters(pub.page), sfuCounters(server)]);
  return { sub: s, pub: p, sfu: f };
}

test('a subscriber whose decoder lost its reference sends a PLI; the SFU forwards it; the publisher encodes a keyframe and decoding resumes', { timeout: 180000 }, async () => {
  const server = await h.startServer();
  const browser = await h.launchBrowser();
  const pub = await joinSdk(browser, server, 'keyframe', 'Publisher', { width: 640, height: 480, frameRate: 15 });
  const sub = await joinSdk(browser, server, 'keyframe', 'Viewer', { width: 160, height: 120, frameRate: 10, initScript: { content: `(${transformHook})(${JSON.stringify(WORKER)})` } });
  await waitForMediaFrom(sub.page, [pub.id], { timeout: 40000, what: 'the viewer decoding the publisher' });

  const mid = await pickReceiver(sub.page, pub.id);
  // The transform is in the path and frames still decode through it.
  const through = await subCounters(sub.page);
  let last = through;
  await until(async () => {
    const c = (last = await subCounters(sub.page));
    return c.transform.transform && c.transform.passed > 10 && c.framesDecoded > through.framesDecoded + 10 && c;
  }, { timeout: 15000, interval: 200, what: 'frames decoding through the receiver transform' }).catch((err) => {
    throw new Error(`${err.message}: before ${JSON.stringify(through)}, last ${JSON.stringify(last)}\nviewer console:\n${sub.console.join('\n')}`);
  });

  // A quiet window as long as the drop and the wait for recovery, nothing dropped: no keyframe request anywhere (so
  // the one below is caused by the drop, and the publisher's PLI is the subscriber's, forwarded).
  const q0 = await snapshot(server, pub, sub);
  await sleep(DROP_MS + RESUME_BOUND_MS);
  const q1 = await snapshot(server, pub, sub);
  const quiet = {
    subPli: q1.sub.pliCount + q1.sub.firCount - q0.sub.pliCount - q0.sub.firCount,
    sfuIn: q1.sfu.in - q0.sfu.in,
    pubPli: sum(q1.pub, 'pliCount') + sum(q1.pub, 'firCount') - sum(q0.pub, 'pliCount') - sum(q0.pub, 'firCount'),
    frames: q1.sub.framesDecoded - q0.sub.framesDecoded,
  };
  console.log(`# quiet window (${DROP_MS + RESUME_BOUND_MS} ms, mid ${mid}): subscriber PLI/FIR +${quiet.subPli}, SFU requests in +${quiet.sfuIn}, publisher PLI/FIR +${quiet.pubPli}, frames decoded +${quiet.frames}`);
  assert.ok(quiet.frames > 10, `frames decode in the quiet window (${quiet.frames})`);
  assert.deepEqual({ subPli: quiet.subPli, sfuIn: quiet.sfuIn, pubPli: quiet.pubPli }, { subPli: 0, sfuIn: 0, pubPli: 0 }, 'no keyframe requests while nothing is dropped');

  // The decoder loses its reference: every frame dropped for DROP_MS.
  const before = await snapshot(server, pub, sub, { drop: true });
  const dropStart = Date.now();
  await sleep(DROP_MS);
  // A loaded machine may deliver fewer frames in DROP_MS: keep dropping until 10 were (bounded).
  await until(async () => (await subCounters(sub.page)).transform.dropped >= 10, { timeout: 10000, interval: 50, what: '10 frames dropped' });
  const dropEnd = await subCounters(sub.page, { drop: false });
  assert.ok(dropEnd.framesDecoded - before.sub.framesDecoded <= 2, `decoding stopped while dropping (${dropEnd.framesDecoded - before.sub.framesDecoded} frames)`);

  // Decoding resumes: a keyframe is decoded and frames follow it, within RESUME_BOUND_MS of the drop's end.
  // (A timeout here is reported after the chain below, whose numbers say where the request got lost.)
  let resumedAt = null;
  let resumeError = null;
  const resumed = await until(async () => {
    const c = await subCounters(sub.page);
    if (resumedAt === null && c.framesDecoded > dropEnd.framesDecoded) resumedAt = c.t;
    return c.keyFramesDecoded > before.sub.keyFramesDecoded && c.framesDecoded > dropEnd.framesDecoded + 5 && c;
  }, { timeout: RESUME_BOUND_MS + 5000, interval: 50, what: 'decoding to resume after the drop' }).catch((err) => {
    resumeError = err;
    return null;
  });
  const resumeMs = resumedAt === null ? null : resumedAt - dropEnd.t;
  if (resumed) await sleep(1000);
  const afterwards = await snapshot(server, pub, sub);

  const d = {
    subPli: afterwards.sub.pliCount - before.sub.pliCount,
    subFir: afterwards.sub.firCount - before.sub.firCount,
    sfuIn: afterwards.sfu.in - before.sfu.in,
    sfuOut: afterwards.sfu.out - before.sfu.out,
    sfuThrottled: afterwards.sfu.throttled - before.sfu.throttled,
    pubPli: sum(afterwards.pub, 'pliCount') - sum(before.pub, 'pliCount'),
    pubFir: sum(afterwards.pub, 'firCount') - sum(before.pub, 'firCount'),
    pubKeyFrames: sum(afterwards.pub, 'keyFramesEncoded') - sum(before.pub, 'keyFramesEncoded'),
    subKeyFrames: afterwards.sub.keyFramesDecoded - before.sub.keyFramesDecoded,
    subFramesAfterDrop: afterwards.sub.framesDecoded - dropEnd.framesDecoded,
  };
  const perLayer = Object.fromEntries(Object.keys(afterwards.pub).map((rid) => [rid, {
    pli: afterwards.pub[rid].pliCount - (before.pub[rid]?.pliCount ?? 0),
    keyFrames: afterwards.pub[rid].keyFramesEncoded - (before.pub[rid]?.keyFramesEncoded ?? 0),
  }]));
  console.log(`# dropped ${dropEnd.transform.dropped} frames in ${dropEnd.t - dropStart} ms; subscriber PLI +${d.subPli} FIR +${d.subFir}; SFU requests in +${d.sfuIn}, out +${d.sfuOut}, throttled +${d.sfuThrottled}; publisher PLI +${d.pubPli} FIR +${d.pubFir}, keyframes encoded +${d.pubKeyFrames} (per layer ${JSON.stringify(perLayer)}); subscriber keyframes decoded +${d.subKeyFrames}, first keyframe through the transform ${afterwards.sub.transform.firstKeyAfterDropMs} ms and first decoded frame ${resumeMs} ms after the drop ended, ${d.subFramesAfterDrop} frames decoded since`);

  assert.ok(d.subPli + d.subFir >= 1, `the subscriber asked for a keyframe (PLI +${d.subPli}, FIR +${d.subFir})`);
  assert.ok(d.sfuIn >= 1, `the SFU received the subscriber's keyframe request (+${d.sfuIn})`);
  assert.ok(d.sfuOut >= 1, `the SFU sent a keyframe request to the publisher (+${d.sfuOut})`);
  assert.ok(d.pubPli + d.pubFir >= 1, `the publisher received the forwarded request (PLI +${d.pubPli}, FIR +${d.pubFir})`);
  assert.ok(d.pubKeyFrames >= 1, `the publisher encoded a keyframe (+${d.pubKeyFrames})`);
  if (resumeError) throw resumeError;
  assert.ok(afterwards.sub.transform.keysPassed > before.sub.transform.keysPassed, 'a keyframe reached the subscriber after the drop');
  assert.ok(d.subKeyFrames >= 1, `the subscriber decoded a keyframe (+${d.subKeyFrames})`);
  assert.ok(resumeMs <= RESUME_BOUND_MS, `frames resumed ${resumeMs} ms after the drop ended (bound ${RESUME_BOUND_MS} ms)`);
  assert.ok(d.subFramesAfterDrop > 10, `decoding keeps going after the drop (${d.subFramesAfterDrop} frames)`);
  // No amplification: one request to the publisher (for the layer this subscriber gets) per request received at
  // most, fewer when they come faster than one per 500 ms.
  assert.ok(d.sfuOut <= d.sfuIn, `the SFU sent no more requests (${d.sfuOut}) than it received (${d.sfuIn})`);
});

test('keyframe requests are rate-limited at the SFU: a burst of PLIs from a subscriber reaches the publisher as one; requests 1 s apart each get through', { timeout: 180000 }, async () => {
  const server = await h.startServer();
  const browser = await h.launchBrowser();
  const pub = await joinSdk(browser, server, 'keyframe-burst', 'Publisher', { width: 640, height: 480, frameRate: 15 });
  const sub = await joinSdk(browser, server, 'keyframe-burst', 'Viewer', { width: 160, height: 120, frameRate: 10, initScript: { content: `(${transformHook})(${JSON.stringify(WORKER)})` } });
  await waitForMediaFrom(sub.page, [pub.id], { timeout: 40000, what: 'the viewer decoding the publisher' });
  await pickReceiver(sub.page, pub.id);
  const through = await subCounters(sub.page);
  await until(async () => {
    const c = await subCounters(sub.page);
    return c.transform.passed > 10 && c.framesDecoded > through.framesDecoded + 10;
  }, { timeout: 15000, interval: 200, what: 'frames decoding through the receiver transform' });

  const delta = (a, b) => ({
    subPli: b.sub.pliCount + b.sub.firCount - a.sub.pliCount - a.sub.firCount,
    sfuIn: b.sfu.in - a.sfu.in,
    sfuOut: b.sfu.out - a.sfu.out,
    sfuThrottled: b.sfu.throttled - a.sfu.throttled,
    pubPli: sum(b.pub, 'pliCount') + sum(b.pub, 'firCount') - sum(a.pub, 'pliCount') - sum(a.pub, 'firCount'),
    pubKeyFrames: sum(b.pub, 'keyFramesEncoded') - sum(a.pub, 'keyFramesEncoded'),
  });
  // A quiet second first: no keyframe request anywhere.
  const q0 = await snapshot(server, pub, sub);
  await sleep(1000);
  const quiet = delta(q0, await snapshot(server, pub, sub));
  assert.deepEqual(quiet, { ...quiet, subPli: 0, sfuIn: 0, sfuOut: 0, pubPli: 0 }, 'no keyframe requests before the test makes some');

  // A burst: BURST requests at once from the subscriber's receiver (RTCRtpScriptTransformer.sendKeyFrameRequest).
  const BURST = 10;
  const a = await snapshot(server, pub, sub);
  const t0 = Date.now();
  await subCounters(sub.page, { keyframeRequests: BURST });
  await until(async () => {
    // The subscriber's own count too: Chromium's stats may show its requests after the SFU has them.
    const c = delta(a, await snapshot(server, pub, sub));
    return c.sfuIn >= BURST && c.pubPli >= 1 && c.subPli >= BURST;
  }, { timeout: 5000, interval: 20, what: `the SFU receiving ${BURST} requests and the publisher one` }).catch(async (err) => {
    throw new Error(`${err.message}: ${JSON.stringify(delta(a, await snapshot(server, pub, sub)))}`);
  });
  const b = await snapshot(server, pub, sub);
  const windowMs = Date.now() - t0;
  const burst = delta(a, b);
  // One request per track and layer per 500 ms may go through (a request of the subscriber's own after the burst
  // may add one per 500 ms more).
  const allowed = 1 + Math.floor(windowMs / 500);
  console.log(`# burst of ${BURST} in one instant, counted over ${windowMs} ms: subscriber PLI +${burst.subPli}; SFU requests in +${burst.sfuIn}, out +${burst.sfuOut}, throttled +${burst.sfuThrottled}; publisher PLI +${burst.pubPli}, keyframes encoded +${burst.pubKeyFrames} (all layers)`);
  assert.deepEqual(b.sub.transform.requestErrors, [], 'sendKeyFrameRequest succeeded');
  assert.ok(burst.subPli >= BURST, `the subscriber sent the ${BURST} requests (+${burst.subPli})`);
  assert.ok(burst.sfuIn >= BURST, `the SFU received them (+${burst.sfuIn})`);
  assert.ok(burst.sfuOut >= 1 && burst.sfuOut <= allowed, `the SFU sent ${burst.sfuOut} requests to the publisher (1 to ${allowed} allowed in ${windowMs} ms)`);
  assert.ok(burst.sfuThrottled >= burst.sfuIn - allowed, `the SFU held back the rest (throttled +${burst.sfuThrottled})`);
  assert.ok(burst.pubPli >= 1 && burst.pubPli <= allowed, `the publisher got ${burst.pubPli} requests (1 to ${allowed} allowed)`);

  // Requests 1 s apart (twice the rate limit's interval) each reach the publisher and get a keyframe.
  const spaced = [];
  for (let i = 0; i < 3; i++) {
    await sleep(1000);
    const c0 = await snapshot(server, pub, sub);
    await subCounters(sub.page, { keyframeRequests: 1 });
    const got = await until(async () => {
      const c = delta(c0, await snapshot(server, pub, sub));
      return c.sfuOut >= 1 && c.pubPli >= 1 && c.pubKeyFrames >= 1 && c;
    }, { timeout: 5000, interval: 20, what: `spaced request ${i + 1} reaching the publisher and a keyframe` }).catch(async (err) => {
      throw new Error(`${err.message}: ${JSON.stringify(delta(c0, await snapshot(server, pub, sub)))}`);
    });
    spaced.push(got);
  }
  console.log(`# 3 requests 1 s apart: ${spaced.map((c) => `in +${c.sfuIn} out +${c.sfuOut} publisher PLI +${c.pubPli} keyframes +${c.pubKeyFrames}`).join('; ')}`);
});
