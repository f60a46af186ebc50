// A participant whose signaling WebSocket is cut reconnects and resumes its session (same participant id); the
// other participant never sees it leave, and media and chat continue.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { Harness, waitForMediaFrom, waitForChannels, mediaGrowth, appEvents } from './lib/harness.mjs';

const h = new Harness();
after(() => h.close());

test('a participant whose WebSocket is cut reconnects (resumed, same id); the other never sees a leave and media continues', { timeout: 120000 }, async () => {
  const server = await h.startServer();
  const browser = await h.launchBrowser();
  const alice = await h.join(browser, server, 'reconnect-room', 'Alice');
  const bob = await h.join(browser, server, 'reconnect-room', 'Bob');
  await waitForMediaFrom(alice.page, [bob.id]);
  await waitForMediaFrom(bob.page, [alice.id]);
  await waitForChannels(bob.page, [alice.id]);

  // 1. Cut Alice's socket from the page (as a dropped connection: no `leave`).
  await alice.page.evaluate(() => window.switchboardApp.room.dropSignaling());
  await alice.page.waitForFunction(() => window.switchboardApp.events.some((e) => e.type === 'signaling_state' && e.state === 'reconnecting'), null, { timeout: 5000 });
  await alice.page.waitForFunction(() => window.switchboardApp.room.signalingState === 'connected', null, { timeout: 20000 });
  assert.equal(await alice.page.evaluate(() => window.switchboardApp.room.localParticipant.id), alice.id, 'resumed with the same participant id');

  // 2. Cut it again while Alice's browser context is offline (an open WebSocket survives setOffline, new ones
  //    fail): reconnect attempts fail and back off for 3 s, then succeed once back online.
  await alice.context.setOffline(true);
  await alice.page.evaluate(() => window.switchboardApp.room.dropSignaling());
  await alice.page.waitForTimeout(3000);
  assert.equal(await alice.page.evaluate(() => window.switchboardApp.room.signalingState), 'reconnecting', 'cannot reconnect while offline');
  assert.match(await alice.page.textContent('#signal-state'), /reconnecting/, 'the app shows the reconnecting state');
  await alice.context.setOffline(false);
  await alice.page.waitForFunction(() => window.switchboardApp.room.signalingState === 'connected', null, { timeout: 25000 });
  assert.equal(await alice.page.evaluate(() => window.switchboardApp.room.localParticipant.id), alice.id, 'still the same participant id');

  const { growing: gb } = await mediaGrowth(bob.page, [alice.id], 3000);
  const { growing: ga } = await mediaGrowth(alice.page, [bob.id], 3000);
  assert.ok(gb[alice.id].frames > 10 && gb[alice.id].samples > 0, `Bob still receives Alice: ${JSON.stringify(gb)}`);
  assert.ok(ga[bob.id].frames > 10 && ga[bob.id].samples > 0, `Alice still receives Bob: ${JSON.stringify(ga)}`);

  // Signaling works again after the resume: a metadata update (mute) relayed through the server reaches Bob.
  await alice.page.click('#btn-mic');
  await bob.page.waitForFunction((id) => window.switchboardApp.room.participants.get(id)?.audioMuted === true, alice.id, { timeout: 10000 });
  assert.equal(await bob.page.locator(`.tile[data-pid="${alice.id}"] .mic`).isVisible(), true, 'Bob sees Alice\'s mic-off indicator');

  // Chat still flows.
  await alice.page.fill('#chat-input', 'still here');
  await alice.page.press('#chat-input', 'Enter');
  await bob.page.waitForFunction(() => window.switchboardApp.chat.some((m) => m.text === 'still here'), null, { timeout: 10000 });

  const events = await appEvents(bob.page);
  const left = events.filter((e) => e.type === 'participant_left');
  assert.deepEqual(left, [], 'Bob never saw a participant_left');
  assert.equal(await bob.page.evaluate((id) => window.switchboardApp.room.participants.has(id), alice.id), true);
});
