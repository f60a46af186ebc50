// Active speaker in an sfu room: the SFU reads each publisher's audio level (RFC 6464 header extension) and
// sends `{"type":"active_speaker","id":...}` to the room when the loudest participant changes. Three participants
// with Chromium's fake microphone (a periodic beep): with only Alice unmuted everyone is told Alice speaks; then
// Alice mutes and Bob unmutes, and everyone is told Bob speaks.
//
// Large rooms (`sfu.drop-silent-audio-above`, here 2): the muted participants' silent audio frames are not
// forwarded, the speaker's are.
//
// Run: cargo build -p switchboard && node --test --test-concurrency=1 tests/sfu/speaker.test.mjs
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { Harness, waitForMediaFrom, mediaGrowth, mediaCounters, httpGet, sleep, until } from '../e2e/lib/harness.mjs';
import { joinSdk, metric, startServerWith } from './lib.mjs';

const h = new Harness();
after(() => h.close());

process.env.SWITCHBOARD_SFU_ENABLED = 'true';

async function speakerIs(p, id, what) {
  try {
    await p.page.waitForFunction((id) => window.switchboardApp.room.activeSpeaker?.id === id, id, { timeout: 15000, polling: 100 });
  } catch (err) {
    const ev = await p.page.evaluate(() => window.switchboardApp.events.filter((e) => e.type === 'active_speaker'));
    throw new Error(`${p.name}: ${what}: ${err.message}; active_speaker events: ${JSON.stringify(ev)}`);
  }
}

test('active speaker: the unmuted participant is announced to everyone, and the next one when it changes', { timeout: 150000 }, async () => {
  process.env.SWITCHBOARD_ROOMS_DEFAULT_MODE = 'sfu';
  const server = await h.startServer();
  const browser = await h.launchBrowser();
  const ps = [];
  for (const name of ['Alice', 'Bob', 'Carol']) {
    const p = await joinSdk(browser, server, 'speaker', name);
    if (name !== 'Alice') await p.page.evaluate(() => window.switchboardApp.room.mute('audio'));
    ps.push(p);
  }
  const [alice, bob] = ps;
  for (const p of ps) await waitForMediaFrom(p.page, ps.filter((o) => o !== p).map((o) => o.id), { timeout: 40000, what: `${p.name} receiving everyone` });
  for (const p of ps) await speakerIs(p, alice.id, 'Alice (the only one unmuted) is the active speaker');
  await alice.page.evaluate(() => window.switchboardApp.room.mute('audio'));
  await bob.page.evaluate(() => window.switchboardApp.room.unmute('audio'));
  const t0 = Date.now();
  for (const p of ps) await speakerIs(p, bob.id, 'Bob is the active speaker after Alice muted and Bob unmuted');
  console.log(`# active speaker moved to Bob after ${Date.now() - t0} ms`);
  const events = await ps[2].page.evaluate(() => window.switchboardApp.events.filter((e) => e.type === 'active_speaker').map((e) => e.id));
  assert.ok(!events.includes(ps[2].id), 'Carol (muted throughout) was never the active speaker');
});

test('a room above drop-silent-audio-above: muted participants\' silent audio is not forwarded, the speaker\'s is', { timeout: 150000 }, async () => {
  process.env.SWITCHBOARD_ROOMS_DEFAULT_MODE = 'sfu';
  const server = await startServerWith(h, { SWITCHBOARD_SFU_DROP_SILENT_AUDIO_ABOVE: '2' });
  const browser = await h.launchBrowser();
  const ps = [];
  for (const name of ['Alice', 'Bob', 'Carol']) {
    const p = await joinSdk(browser, server, 'quiet', name);
    if (name !== 'Alice') await p.page.evaluate(() => window.switchboardApp.room.mute('audio'));
    ps.push(p);
  }
  const [alice, bob, carol] = ps;
  // Video from everyone (a muted participant's audio may never reach the others here: it is all silence).
  for (const p of ps) {
    const others = ps.filter((o) => o !== p).map((o) => o.id);
    await until(async () => {
      const c = await mediaCounters(p.page);
      return others.every((id) => c[id]?.framesDecoded > 0);
    }, { timeout: 40000, what: `${p.name} decoding everyone's video` });
  }
  const counters = async () => {
    const text = (await httpGet(server, '/metrics')).body;
    return {
      in: metric(text, 'sfu_rtp_packets_in_total', { kind: 'audio' }) || 0,
      out: metric(text, 'sfu_rtp_packets_out_total', { kind: 'audio' }) || 0,
      dropped: metric(text, 'sfu_silent_audio_dropped_total') || 0,
    };
  };
  await sleep(2000);
  const a = await counters();
  const { growing } = await mediaGrowth(carol.page, [alice.id], 4000);
  const b = await counters();
  const pin = b.in - a.in;
  const pout = b.out - a.out;
  const dropped = b.dropped - a.dropped;
  console.log(`# 4 s, 3 participants, 2 muted: audio packets in ${pin}, out ${pout}, silent frames dropped ${dropped}; Carol got ${growing[alice.id].samples} samples from Alice`);
  // Without dropping, every audio packet in goes out twice (3 participants); the muted two are two thirds of it.
  assert.ok(dropped > 100, `silent frames were dropped (${dropped})`);
  assert.ok(pout < 1.2 * pin, `audio out (${pout}) is well below twice audio in (${pin}): the muted participants' audio is not forwarded`);
  assert.ok(growing[alice.id].samples > 48000 * 2, `Carol still hears Alice (${growing[alice.id].samples} samples in 4 s)`);
});
