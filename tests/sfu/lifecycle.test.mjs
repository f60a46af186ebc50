// SFU lifecycle: a participant whose media path dies without a goodbye (its browser is SIGKILLed: no DTLS close,
// no leave) is removed from the SFU after ICE notices and `sfu.media-timeout-secs` (here 3 s) pass: the SFU forgets
// it (`sfu_participants`, `sfu_media_timeouts_total`) and stops forwarding its tracks to the others, who
// renegotiate them away (here before the signaling grace period, set to 60 s, ends its room membership).
//
// Run: cargo build -p switchboard && node --test --test-concurrency=1 tests/sfu/lifecycle.test.mjs
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { Harness, waitForMediaFrom, httpGet, until } from '../e2e/lib/harness.mjs';
import { joinSdk, metric, startServerWith } from './lib.mjs';

const h = new Harness();
after(() => h.close());

process.env.SWITCHBOARD_SFU_ENABLED = 'true';

test('a participant whose SFU media path dies is removed from the SFU after media-timeout-secs; the others drop its tracks', { timeout: 120000 }, async () => {
  process.env.SWITCHBOARD_ROOMS_DEFAULT_MODE = 'sfu';
  const server = await startServerWith(h, {
    SWITCHBOARD_SFU_MEDIA_TIMEOUT_SECS: '3',
    // Long enough that the room does not end Bob's membership first (his socket died too).
    SWITCHBOARD_ROOMS_RECONNECT_GRACE_SECS: '60',
  });
  const browser = await h.launchBrowser();
  const alice = await joinSdk(browser, server, 'lifecycle', 'Alice');
  const ownBrowsers = () => execFileSync('ps', ['-o', 'pid=,comm=', '--ppid', String(process.pid)], { encoding: 'utf8' })
    .split('\n').map((l) => l.trim().split(/\s+/)).filter(([, c]) => c && /chrom/.test(c)).map(([p]) => Number(p));
  const earlier = new Set(ownBrowsers());
  const bobBrowser = await h.launchBrowser();
  // Bob's browser: the Chromium child of this test process launched just now.
  const bobPids = ownBrowsers().filter((p) => !earlier.has(p));
  const bob = await joinSdk(bobBrowser, server, 'lifecycle', 'Bob');
  await waitForMediaFrom(alice.page, [bob.id], { timeout: 40000, what: 'Alice receiving Bob' });
  await waitForMediaFrom(bob.page, [alice.id], { timeout: 40000, what: 'Bob receiving Alice' });
  const metrics = async () => {
    const text = (await httpGet(server, '/metrics')).body;
    return { participants: metric(text, 'sfu_participants'), timeouts: metric(text, 'sfu_media_timeouts_total') };
  };
  assert.deepEqual(await metrics(), { participants: 2, timeouts: 0 });
  const liveTracksFromBob = () => alice.page.evaluate(() => window.switchboardApp.room.sfu.pc.getReceivers()
    .filter((r) => r.track && r.track.readyState === 'live' && r.transport && r.transport.state !== 'closed').length);
  const before = await liveTracksFromBob();

  // Bob's browser dies without a word.
  assert.equal(bobPids.length, 1, `Bob's browser process (${bobPids})`);
  const t0 = Date.now();
  process.kill(bobPids[0], 'SIGKILL');
  let last = null;
  const m = await until(async () => {
    last = await metrics();
    return last.participants === 1 && last.timeouts === 1 && last;
  }, { timeout: 40000, interval: 250, what: 'the SFU removing Bob after the media timeout' }).catch((err) => {
    throw new Error(`${err.message}: metrics ${JSON.stringify(last)}\nserver log:\n${server.log.slice(-25).join('\n')}`);
  });
  console.log(`# Bob removed from the SFU ${Date.now() - t0} ms after his browser died (ICE disconnected, then 3 s)`);
  assert.deepEqual(m, { participants: 1, timeouts: 1 });
  // Alice's SFU session renegotiates Bob's tracks away (their m-lines stopped).
  await until(async () => {
    const tx = await alice.page.evaluate(() => window.switchboardApp.room.sfu.pc.getTransceivers().filter((t) => t.currentDirection === 'recvonly').length);
    return tx === 0;
  }, { timeout: 20000, what: "Alice's receive-only transceivers for Bob stopped" });
  console.log(`# Alice had ${before} live receivers from the SFU before`);
});
