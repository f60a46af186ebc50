// Relay-only mode (?relay=1 → iceTransportPolicy 'relay') connects through Switchboard's own TURN server: the
// selected candidate pair is of type relay on both sides, and media flows.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { Harness, waitForMediaFrom, mediaGrowth, until, mediaCounters } from './lib/harness.mjs';

const h = new Harness();
after(() => h.close());

test('relay-only mode connects through our TURN server: the selected candidate pair is relay on both sides', { timeout: 90000 }, async () => {
  const server = await h.startServer();
  const browser = await h.launchBrowser();
  const alice = await h.join(browser, server, 'relay-room', 'Alice', { relay: true });
  const bob = await h.join(browser, server, 'relay-room', 'Bob', { relay: true });
  const iceServers = await alice.page.evaluate(() => window.switchboardApp.room.iceServers);
  const turnUrls = iceServers.flatMap((s) => [].concat(s.urls)).filter((u) => /^turns?:/.test(u));
  assert.ok(turnUrls.length > 0, `joined.ice_servers has no TURN server: ${JSON.stringify(iceServers)}`);
  assert.equal(await alice.page.evaluate(() => window.switchboardApp.room.options.iceTransportPolicy), 'relay');
  assert.equal(await alice.page.isChecked('#relay-toggle'), true, 'the relay switch shows relay mode');

  let last;
  try {
    await until(async () => {
      const a = (await mediaCounters(alice.page))[bob.id];
      const b = (await mediaCounters(bob.page))[alice.id];
      last = { alice: a, bob: b };
      return a?.connectionState === 'connected' && b?.connectionState === 'connected' && a.local && b.local;
    }, { timeout: 30000, what: 'relay-only peer connection' });
  } catch (err) {
    throw new Error(`${err.message}\nTURN urls: ${turnUrls.join(' ')}\nstats: ${JSON.stringify(last)}\nserver log (tail):\n${server.log.slice(-20).join('\n')}`);
  }
  const a = (await mediaCounters(alice.page))[bob.id];
  const b = (await mediaCounters(bob.page))[alice.id];
  assert.equal(a.local, 'relay', `Alice's local candidate: ${JSON.stringify(a)}`);
  assert.equal(b.local, 'relay', `Bob's local candidate: ${JSON.stringify(b)}`);
  assert.equal(a.path, 'relay');
  assert.equal(b.path, 'relay');
  await waitForMediaFrom(alice.page, [bob.id]);
  await waitForMediaFrom(bob.page, [alice.id]);
  const { growing } = await mediaGrowth(alice.page, [bob.id], 2000);
  assert.ok(growing[bob.id].frames > 0, 'video flows through the relay');
  // The stats panel says so too.
  await alice.page.click('.tabs button[data-tab="stats"]');
  await alice.page.waitForFunction(() => /relay/.test(document.querySelector('#stats-body')?.textContent || ''), null, { timeout: 10000 });
});
