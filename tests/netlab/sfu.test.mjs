// The SFU adapts to a subscriber's real downlink: Alice (behind NAT A) publishes simulcast (two layers from her
// 640x480 camera) into an `sfu` room; Bob's downlink (behind NAT B) is throttled with tc (tbf) on his router to
// between the two layers' bitrates. Bob's receiver reports loss (9), or his transport-wide feedback shows the
// queue and the loss (9b), the SFU's estimate for him falls and it forwards him the lower layer; when the limit is
// lifted, the estimate grows back (the SFU tries the full layer again, or probes for it with padding) and he gets
// the full layer. Frames keep decoding throughout (no long stall of Bob's decoder).
//
// (15): random loss on Bob's downlink only — Bob's NACKs are answered by the SFU from its retransmission buffer
// (Bob receives retransmissions, Alice, whose uplink is clean, gets no NACK and resends nothing), and the SFU's
// sender reports reach Bob.
//
// Run: sudo node --test --test-concurrency=1 tests/netlab/sfu.test.mjs   (see docs/nat-traversal.md)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SERVER_IP, sleep, until } from './lib/lab.mjs';
import { withLab, skipReason } from './lib/scenario.mjs';

const SFU_ENV = {
  SWITCHBOARD_ROOMS_DEFAULT_MODE: 'sfu',
  SWITCHBOARD_SFU_LISTEN_IP: SERVER_IP,
  SWITCHBOARD_SFU_UDP_PORT: '0',
};

/** Bob's decoded video from `pubId`: {frames, width}. */
async function video(page, pubId) {
  return page.evaluate(async (id) => {
    const s = (await window.switchboardApp.room.getStats())[id];
    return { frames: s?.video.framesDecoded ?? 0, width: s?.video.frameWidth ?? 0 };
  }, pubId);
}

// (9) with each of the SFU's downlink estimators: `loss` (the default: Bob's receiver reports) and, as (9b), `twcc`
// (str0m's GoogCC on Bob's transport-wide congestion control feedback).
for (const [num, mode] of [['9', 'loss'], ['9b', 'twcc']]) {
test(`(${num}) sfu room, ${mode} estimate: a throttled downlink gets a lower simulcast layer, the full one once the limit is lifted, frames decoding throughout`, { skip: skipReason || false, timeout: 180000 }, async (t) => {
  const env = { ...SFU_ENV, SWITCHBOARD_SFU_BANDWIDTH_ESTIMATION: mode };
  await withLab(t, `sfu-bwe-${mode}`, { a: { nat: 'eim' }, b: { nat: 'eim' }, turn: false, env }, async ({ lab }) => {
    const alice = await lab.join('a', 'bwe-room', 'Alice');
    // Bob only watches: less CPU on the 2-core lab host, so Alice's encoder keeps its full layer.
    const bob = await lab.join('b', 'bwe-room', 'Bob', { publish: false });
    const layers = () => alice.page.evaluate(() => window.switchboardApp.room.sfu.pc.getSenders()
      .filter((s) => s.track?.kind === 'video').map((s) => s.getParameters().encodings.map((e) => e.rid)).flat());
    assert.deepEqual(await layers(), ['h', 'f'], 'Alice publishes simulcast: two layers from a 640x480 camera');
    // Keep the layers' sizes fixed (a CPU-starved encoder would otherwise shrink them, which looks like a switch).
    await alice.page.evaluate(async () => {
      for (const sender of window.switchboardApp.room.sfu.pc.getSenders().filter((x) => x.track?.kind === 'video')) {
        const p = sender.getParameters();
        p.degradationPreference = 'maintain-resolution';
        await sender.setParameters(p);
      }
    });
    let last = null;
    const full = await until(async () => {
      last = await video(bob.page, alice.id);
      return last.width >= 600 && last;
    }, { timeout: 45000, interval: 500, what: 'Bob decoding Alice at full size (unthrottled)' }).catch((err) => {
      throw new Error(`${err.message}: Bob's video from Alice ${JSON.stringify(last)}\nserver log:\n${lab.server.log.slice(-40).join('\n')}`);
    });
    // The limit: between the two layers' bitrates as Alice sends them now (they depend on the machine).
    const sent = () => alice.page.evaluate(async () => {
      const r = {};
      (await window.switchboardApp.room.sfu.pc.getStats()).forEach((s) => {
        if (s.type === 'outbound-rtp' && s.kind === 'video') r[s.rid] = s.bytesSent;
      });
      return r;
    });
    // Alice's encoder ramps up with her uplink estimate: wait until the full layer is well above the half one.
    let hKbps = 0;
    let fKbps = 0;
    await until(async () => {
      const s0 = await sent();
      await sleep(2000);
      const s1 = await sent();
      const rate = (rid) => Math.round(((s1[rid] ?? 0) - (s0[rid] ?? 0)) * 8 / 2 / 1000);
      [hKbps, fKbps] = [rate('h'), rate('f')];
      return fKbps > 1.6 * hKbps && fKbps > 300;
    }, { timeout: 60000, interval: 0, what: 'Alice\'s full layer well above her half one' }).catch(async (err) => {
      const why = await alice.page.evaluate(async () => {
        const r = [];
        (await window.switchboardApp.room.sfu.pc.getStats()).forEach((x) => {
          if (x.type === 'outbound-rtp' && x.kind === 'video') r.push(`${x.rid}: ${x.frameWidth}px ${x.framesPerSecond} fps, limited by ${x.qualityLimitationReason}`);
          if (x.type === 'candidate-pair' && x.nominated) r.push(`available outgoing ${x.availableOutgoingBitrate} bit/s`);
        });
        return r.join('; ');
      });
      throw new Error(`${err.message}: h ${hKbps} kbit/s, f ${fKbps} kbit/s (${why})`);
    });
    // A third of the way from h to f (+40 kbit/s for audio and RTCP): h fits, f is well over (≥ 20 % loss).
    const limit = process.env.NETLAB_SFU_LIMIT || `${Math.round(hKbps + (fKbps - hKbps) / 3 + 40)}kbit`;
    lab.note(`Alice sends h at ${hKbps} kbit/s, f at ${fKbps} kbit/s: Bob's downlink limit ${limit}`);
    lab.note(`unthrottled: Bob (${bob.id}) decodes Alice (${alice.id}) at width ${full.width}`);

    // Sample Bob's decoding every 250 ms through throttling and release.
    const samples = [];
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        samples.push({ t: Date.now(), ...(await video(bob.page, alice.id)) });
        await sleep(250);
      }
    })();
    try {
      // Unthrottled, the estimate keeps Bob on the full layer while Alice's encoder ramped up (no false alarm).
      await until(async () => (await video(bob.page, alice.id)).width >= full.width, { timeout: 5000, interval: 250, what: 'Bob still on the full layer before the limit' });
      lab.shape('b', limit);
      const t0 = Date.now();
      lab.note(`${new Date(t0).toISOString().slice(11, 23)} Bob's downlink limited to ${limit}`);
      const low = await until(async () => {
        const v = await video(bob.page, alice.id);
        return v.width > 0 && v.width <= full.width / 2 && v;
      }, { timeout: 30000, interval: 250, what: `a lower layer for Bob at ${limit}` });
      lab.note(`downlink ${limit}: Bob switched to width ${low.width} after ${Date.now() - t0} ms`);
      const before = low.frames;
      await sleep(4000);
      const held = await video(bob.page, alice.id);
      lab.note(`at ${limit}: ${held.frames - before} frames in 4 s at width ${held.width}`);
      assert.ok(held.frames - before >= 20, `Bob keeps decoding at ${limit} (${held.frames - before} frames in 4 s)`);
      assert.ok(held.width <= full.width / 2, `Bob stays on a lower layer while throttled (width ${held.width})`);

      lab.shape('b', 'off');
      const t1 = Date.now();
      lab.note(`${new Date(t1).toISOString().slice(11, 23)} limit lifted`);
      const back = await until(async () => {
        const v = await video(bob.page, alice.id);
        return v.width >= full.width && v;
      }, { timeout: 60000, interval: 250, what: 'the full layer for Bob after the limit is lifted' });
      lab.note(`limit lifted: Bob back at width ${back.width} after ${Date.now() - t1} ms`);
      await sleep(2000);
    } finally {
      sampling = false;
      await sampler;
      lab.shape('b', 'off');
      // The SFU's view (also when a wait above failed): its downlink estimates and the caps they set.
      for (const l of lab.server.log.filter((x) => /downlink (estimate|report)|bandwidth caps|allocating/.test(x))) lab.note(`server: ${l.slice(11, 23)} ${l.replace(/^.*sfu::engine: /, '')}`);
    }
    // Decoding never stopped for long: the SFU switches layers on keyframes, with continuous timestamps.
    let worst = 0;
    let since = samples[0].t;
    for (let i = 1; i < samples.length; i++) {
      if (samples[i].frames > samples[i - 1].frames) since = samples[i].t;
      worst = Math.max(worst, samples[i].t - since);
    }
    const widths = [...new Set(samples.map((s) => s.width))];
    lab.note(`${samples.length} samples, widths ${widths.join(', ')}, frames ${samples[0].frames} → ${samples.at(-1).frames}, longest stall ${worst} ms`);
    // The one stall: from the limit until the SFU notices (receiver reports come once a second, the loss-based
    // estimate needs a report with > 10 % loss) and the lower layer's keyframe arrives.
    assert.ok(worst < 6000, `no decoding stall over 6 s (longest ${worst} ms)`);
    const metrics = lab.httpGet('/metrics') || '';
    const changes = Number(metrics.match(/^sfu_bandwidth_layer_changes_total (\S+)/m)?.[1] ?? 0);
    lab.note(`sfu_bandwidth_layer_changes_total ${changes}`);
    assert.ok(changes >= 2, `the SFU changed Bob's layer by bandwidth, down and up (${changes})`);
    // The estimates in force came from the configured estimator.
    const estimates = (source) => Number(metrics.match(new RegExp(`^sfu_bandwidth_estimates_total\\{source="${source}"\\} (\\S+)`, 'm'))?.[1] ?? 0);
    const other = mode === 'twcc' ? 'loss' : 'twcc';
    lab.note(`sfu_bandwidth_estimates_total: ${mode} ${estimates(mode)}, ${other} ${estimates(other)}, remb ${estimates('remb')}`);
    assert.ok(estimates(mode) >= 2, `Bob's estimate came from ${mode} (${estimates(mode)} changes)`);
    assert.equal(estimates(other), 0, `no ${other} estimate with ${mode}`);
  });
});
}

test('(10) sfu room, UDP blocked at A and no TURN: Alice reaches the SFU over ICE-TCP, media both ways', { skip: skipReason || false, timeout: 120000 }, async (t) => {
  await withLab(t, 'sfu-tcp', { a: { nat: 'eim', udpBlock: true }, b: { nat: 'eim' }, turn: false, env: SFU_ENV }, async ({ lab }) => {
    assert.ok(lab.server.listening['sfu-tcp'], `the SFU listens on TCP too: ${JSON.stringify(lab.server.listening)}`);
    const alice = await lab.join('a', 'tcp-room', 'Alice');
    const bob = await lab.join('b', 'tcp-room', 'Bob');
    const pair = (p) => p.page.evaluate(async () => {
      let out = null;
      const stats = await window.switchboardApp.room.sfu.pc.getStats();
      stats.forEach((t) => {
        if (t.type !== 'transport' || !t.selectedCandidatePairId) return;
        const s = stats.get(t.selectedCandidatePairId);
        const l = stats.get(s.localCandidateId);
        const r = stats.get(s.remoteCandidateId);
        out = { local: `${l.candidateType}/${l.protocol}`, remote: `${r.candidateType}/${r.protocol} ${r.address}:${r.port}` };
      });
      return out;
    });
    for (const [p, other] of [[alice, bob], [bob, alice]]) {
      await until(async () => {
        const s = (await p.page.evaluate(async () => window.switchboardApp.room.getStats()))[other.id];
        return s && s.video.framesDecoded > 10 && s.audio.totalSamplesReceived > 0;
      }, { timeout: 45000, interval: 500, what: `${p.name} decoding ${other.name} through the SFU` });
    }
    const a = await pair(alice);
    const b = await pair(bob);
    lab.note(`Alice's pair to the SFU: ${JSON.stringify(a)}; Bob's: ${JSON.stringify(b)}`);
    assert.match(a.remote, /^host\/tcp /, 'Alice uses the SFU\'s TCP candidate');
    assert.match(b.remote, /^host\/udp /, 'Bob (UDP allowed) still uses UDP');
  });
});

/** Video RTP counters of a page's SFU link: inbound (summed) and outbound (summed over layers), and SR reports. */
function rtpCounters(page) {
  return page.evaluate(async () => {
    const out = { nackSent: 0, received: 0, lost: 0, rtxReceived: 0, framesDecoded: 0, nackReceived: 0, rtxSent: 0, sent: 0, srReceived: 0 };
    const stats = await window.switchboardApp.room.sfu.pc.getStats();
    stats.forEach((s) => {
      if (s.kind !== 'video') return;
      if (s.type === 'inbound-rtp') {
        out.nackSent += s.nackCount || 0;
        out.received += s.packetsReceived || 0;
        out.lost += s.packetsLost || 0;
        out.rtxReceived += s.retransmittedPacketsReceived || 0;
        out.framesDecoded += s.framesDecoded || 0;
      } else if (s.type === 'outbound-rtp') {
        out.nackReceived += s.nackCount || 0;
        out.rtxSent += s.retransmittedPacketsSent || 0;
        out.sent += s.packetsSent || 0;
      } else if (s.type === 'remote-outbound-rtp') {
        out.srReceived += s.reportsSent || 0;
      }
    });
    return out;
  });
}

test('(15) sfu room, 5 % loss on Bob\'s downlink: the SFU answers his NACKs from its own buffer (Alice resends nothing), its sender reports reach him', { skip: skipReason || false, timeout: 120000 }, async (t) => {
  await withLab(t, 'sfu-nack', { a: { nat: 'eim' }, b: { nat: 'eim' }, turn: false, env: SFU_ENV }, async ({ lab }) => {
    const alice = await lab.join('a', 'nack-room', 'Alice', { simulcast: false });
    const bob = await lab.join('b', 'nack-room', 'Bob', { publish: false });
    await until(async () => (await video(bob.page, alice.id)).frames > 30, { timeout: 45000, interval: 500, what: 'Bob decoding Alice through the SFU' });
    const a0 = await rtpCounters(alice.page);
    const b0 = await rtpCounters(bob.page);
    lab.loss('b', 5);
    lab.note(`Bob's downlink drops 5 % of its UDP packets (nftables numgen on router B) for 8 s`);
    await sleep(8000);
    lab.loss('b', 'off');
    const a1 = await rtpCounters(alice.page);
    const b1 = await rtpCounters(bob.page);
    const d = (x, y) => Object.fromEntries(Object.keys(x).map((k) => [k, y[k] - x[k]]));
    const bob8 = d(b0, b1);
    const alice8 = d(a0, a1);
    lab.note(`Bob in 8 s: ${bob8.received} video packets, ${bob8.nackSent} NACKs sent, ${bob8.rtxReceived} retransmissions received, ${bob8.lost} counted lost (packetsLost), ${bob8.framesDecoded} frames decoded, ${bob8.srReceived} sender reports`);
    lab.note(`Alice in 8 s: ${alice8.sent} video packets sent, ${alice8.nackReceived} NACKs received, ${alice8.rtxSent} retransmissions sent`);
    assert.ok(bob8.nackSent > 0, `Bob asked for retransmissions (${bob8.nackSent} NACKs)`);
    assert.ok(bob8.rtxReceived > 0, `Bob received retransmissions (${bob8.rtxReceived})`);
    assert.ok(bob8.rtxReceived >= bob8.nackSent / 4, `most NACKs were answered (${bob8.rtxReceived} retransmissions for ${bob8.nackSent} NACKs)`);
    assert.equal(alice8.rtxSent, 0, `Alice (clean uplink) resent nothing: the SFU answered from its buffer (${alice8.rtxSent} retransmissions from Alice, ${alice8.nackReceived} NACKs to her)`);
    assert.ok(bob8.framesDecoded > 40, `Bob kept decoding under loss (${bob8.framesDecoded} frames in 8 s)`);
    assert.ok(bob8.srReceived > 0, `the SFU's sender reports reach Bob (${bob8.srReceived} in 8 s)`);
  });
});
