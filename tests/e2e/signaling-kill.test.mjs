// The design's core property: once peers are connected, the call does not depend on the signaling server.
// SIGKILL the server (by PID) and for 10 more seconds video frames keep being decoded and data-channel messages
// keep arriving, both ways.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { Harness, waitForMediaFrom, waitForChannels, mediaCounters, until, sleep } from './lib/harness.mjs';

const h = new Harness();
after(() => h.close());

test('after the signaling server is killed (SIGKILL) video keeps flowing and data-channel messages keep arriving for 10 s', { timeout: 90000 }, async () => {
  const server = await h.startServer();
  const browser = await h.launchBrowser();
  const alice = await h.join(browser, server, 'kill-room', 'Alice');
  const bob = await h.join(browser, server, 'kill-room', 'Bob');
  await waitForMediaFrom(alice.page, [bob.id]);
  await waitForMediaFrom(bob.page, [alice.id]);
  await waitForChannels(alice.page, [bob.id]);
  await waitForChannels(bob.page, [alice.id]);

  server.kill('SIGKILL');
  await until(() => server.exited, { timeout: 5000, what: 'server process to die' });
  assert.equal(server.exitInfo.signal, 'SIGKILL');
  await alice.page.waitForFunction(() => window.switchboardApp.room.signalingState !== 'connected', null, { timeout: 10000 });

  const a0 = (await mediaCounters(alice.page))[bob.id];
  const b0 = (await mediaCounters(bob.page))[alice.id];
  const samples = [];
  for (let i = 0; i < 10; i++) {
    await alice.page.evaluate((n) => window.switchboardApp.sendChat(`alice after kill ${n}`), i);
    await bob.page.evaluate((n) => window.switchboardApp.sendChat(`bob after kill ${n}`), i);
    await sleep(1000);
    samples.push({ a: (await mediaCounters(alice.page))[bob.id].framesDecoded, b: (await mediaCounters(bob.page))[alice.id].framesDecoded });
  }
  const a1 = (await mediaCounters(alice.page))[bob.id];
  const b1 = (await mediaCounters(bob.page))[alice.id];
  // Frames grew in every second of the 10, both directions.
  for (let i = 1; i < samples.length; i++) {
    assert.ok(samples[i].a > samples[i - 1].a, `Alice's decoded frames stalled at second ${i}: ${JSON.stringify(samples)}`);
    assert.ok(samples[i].b > samples[i - 1].b, `Bob's decoded frames stalled at second ${i}: ${JSON.stringify(samples)}`);
  }
  assert.ok(a1.framesDecoded - a0.framesDecoded > 100, `Alice decoded ${a1.framesDecoded - a0.framesDecoded} frames in 10 s`);
  assert.ok(b1.framesDecoded - b0.framesDecoded > 100, `Bob decoded ${b1.framesDecoded - b0.framesDecoded} frames in 10 s`);
  assert.ok(a1.totalSamplesReceived > a0.totalSamplesReceived && b1.totalSamplesReceived > b0.totalSamplesReceived, 'audio keeps playing');
  assert.equal(a1.connectionState, 'connected');
  assert.equal(b1.connectionState, 'connected');

  const recvA = await alice.page.evaluate(() => window.switchboardApp.chat.filter((m) => !m.mine && m.text.startsWith('bob after kill')).map((m) => m.text));
  const recvB = await bob.page.evaluate(() => window.switchboardApp.chat.filter((m) => !m.mine && m.text.startsWith('alice after kill')).map((m) => m.text));
  assert.deepEqual(recvB, Array.from({ length: 10 }, (_, i) => `alice after kill ${i}`));
  assert.deepEqual(recvA, Array.from({ length: 10 }, (_, i) => `bob after kill ${i}`));
  // The app tells the user signaling is gone (while the call goes on).
  const badge = await alice.page.textContent('#signal-state');
  assert.match(badge, /reconnecting|disconnected/);
});
