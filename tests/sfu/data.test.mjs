// Data channels in an sfu room: the SFU relays chat and files (docs/protocol.md, "SFU rooms"). Three Chromium
// participants: chat typed in the UI arrives at both others attributed to its sender, both ways; a 5 MiB file
// from the file input arrives intact at both receivers (SHA-256 equal) and the sender sees both checksums OK;
// a message sent to one participant reaches only that one.
//
// Run: cargo build -p switchboard && node --test --test-concurrency=1 tests/sfu/data.test.mjs
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Harness, httpGet } from '../e2e/lib/harness.mjs';
import { metric } from './lib.mjs';

const h = new Harness();
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'switchboard-sfu-data-'));
after(async () => {
  await h.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

process.env.SWITCHBOARD_SFU_ENABLED = 'true';

/** Waits until `page`'s data and file channels to the SFU are open. */
async function waitForSfuChannels(page, timeout = 30000) {
  await page.waitForFunction(() => {
    const sfu = window.switchboardApp.room.sfu;
    return sfu?.channels?.data?.readyState === 'open' && sfu.channels.file?.readyState === 'open';
  }, null, { timeout });
}

test('sfu room of three: chat both ways and a 5 MiB file arrive intact through the SFU, attributed to the sender', { timeout: 180000 }, async () => {
  process.env.SWITCHBOARD_ROOMS_DEFAULT_MODE = 'sfu';
  const server = await h.startServer();
  const browser = await h.launchBrowser();
  const small = { width: 800, height: 600 };
  const alice = await h.join(browser, server, 'sfu-data', 'Alice', { viewport: small });
  const bob = await h.join(browser, server, 'sfu-data', 'Bob', { viewport: small });
  const carol = await h.join(browser, server, 'sfu-data', 'Carol', { viewport: small });
  const all = [alice, bob, carol];
  for (const p of all) {
    assert.equal(await p.page.evaluate(() => window.switchboardApp.room.roomInfo?.mode), 'sfu');
    await waitForSfuChannels(p.page);
    // Everyone sees the other two in the roster before chatting (messages from unknown senders are dropped).
    await p.page.waitForFunction(() => window.switchboardApp.room.participants.size === 2, null, { timeout: 20000 });
  }

  // Chat through the chat box: Alice's lines reach Bob and Carol, in order and attributed to Alice; Bob's reply
  // reaches Alice and Carol.
  const lines = ['hello room 👋', 'second line with "quotes" & <tags>', 'x'.repeat(2000)];
  for (const line of lines) {
    await alice.page.fill('#chat-input', line);
    await alice.page.press('#chat-input', 'Enter');
  }
  await bob.page.fill('#chat-input', 'hi Alice');
  await bob.page.press('#chat-input', 'Enter');
  for (const p of [bob, carol]) {
    await p.page.waitForFunction((n) => window.switchboardApp.chat.filter((m) => !m.mine && m.text !== 'hi Alice').length >= n, lines.length, { timeout: 15000 });
    const got = await p.page.evaluate(() => window.switchboardApp.chat.filter((m) => !m.mine).map((m) => ({ text: m.text, from: m.fromId })));
    const fromAlice = got.filter((m) => m.from === alice.id).map((m) => m.text);
    assert.deepEqual(fromAlice, lines, `${p.name}: Alice's chat arrives complete, in order, attributed to Alice`);
  }
  for (const p of [alice, carol]) {
    await p.page.waitForFunction((bobId) => window.switchboardApp.chat.some((m) => !m.mine && m.text === 'hi Alice' && m.fromId === bobId), bob.id, { timeout: 15000 });
  }
  assert.ok(!(await bob.page.evaluate(() => window.switchboardApp.chat.some((m) => !m.mine && m.text === 'hi Alice'))), 'the sender does not get its own message back');

  // A message addressed to one participant reaches only that one.
  const recv = (p) => p.page.evaluate(() => {
    window.__dm = [];
    window.switchboardApp.room.on('data', (from, msg) => window.__dm.push({ from: from.id, msg }));
  });
  await recv(bob);
  await recv(carol);
  await alice.page.evaluate((id) => window.switchboardApp.room.sendTo(id, 'for Carol only'), carol.id);
  await carol.page.waitForFunction(() => window.__dm.some((m) => m.msg === 'for Carol only'), null, { timeout: 10000 });
  await alice.page.evaluate(() => window.switchboardApp.room.send('for everyone'));
  await bob.page.waitForFunction(() => window.__dm.some((m) => m.msg === 'for everyone'), null, { timeout: 10000 });
  assert.deepEqual(await bob.page.evaluate(() => window.__dm), [{ from: alice.id, msg: 'for everyone' }], 'Bob got only the broadcast');

  // A 5 MiB random file through Alice's file input: both others receive it intact.
  const size = 5 * 1024 * 1024;
  const file = path.join(tmp, 'random-5MiB.bin');
  const data = crypto.randomBytes(size);
  fs.writeFileSync(file, data);
  const sha = crypto.createHash('sha256').update(data).digest('hex');
  for (const p of all) await p.page.click('.tabs button[data-tab="files"]');
  const m0 = (await httpGet(server, '/metrics')).body;
  const t0 = Date.now();
  await alice.page.setInputFiles('#file-input', file);
  for (const p of [bob, carol]) {
    await p.page.waitForFunction(() => window.switchboardApp.files.length > 0, null, { timeout: 90000 });
    const [rx] = await p.page.evaluate(() => window.switchboardApp.files);
    assert.equal(rx.name, 'random-5MiB.bin');
    assert.equal(rx.size, size);
    assert.equal(rx.sha256, sha, `${p.name}: SHA-256 of the received file equals the sent file's`);
    assert.equal(rx.checksumOk, true);
    const fromAlice = await p.page.evaluate(() => window.switchboardApp.files[0].fromId ?? window.switchboardApp.files[0].from);
    if (fromAlice !== undefined) assert.ok([alice.id, 'Alice'].includes(fromAlice), `${p.name}: file attributed to Alice (${fromAlice})`);
    const item = p.page.locator('#file-list li[data-direction="receive"]');
    assert.equal(await item.locator('progress').evaluate((el) => el.value), 100, `${p.name}: progress bar at 100 %`);
  }
  const seconds = (Date.now() - t0) / 1000;
  await alice.page.waitForFunction(() => /checksum OK \(2 peers\)/.test(document.querySelector('#file-list li[data-direction="send"] .status')?.textContent || ''), null, { timeout: 20000 });
  const m1 = (await httpGet(server, '/metrics')).body;
  const dropped = metric(m1, 'sfu_data_messages_dropped_total') - metric(m0, 'sfu_data_messages_dropped_total');
  assert.equal(dropped, 0, 'the SFU dropped no reliable message');
  console.log(`# 5 MiB to two receivers through the SFU in ${seconds.toFixed(1)} s`);
});
