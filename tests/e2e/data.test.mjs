// Data channels through the UI: chat typed in the chat box (Enter) arrives on the other side, and a 20 MiB
// file picked with the file input arrives intact (SHA-256 equal to the one computed here), progress bar at 100 %.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Harness, waitForChannels } from './lib/harness.mjs';

const h = new Harness();
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'switchboard-e2e-'));
after(async () => {
  await h.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

test('chat messages typed in the UI and a 20 MiB file from the file input arrive intact (checksum equal, progress 100 %)', { timeout: 120000 }, async () => {
  const server = await h.startServer();
  const browser = await h.launchBrowser();
  const alice = await h.join(browser, server, 'data-room', 'Alice');
  const bob = await h.join(browser, server, 'data-room', 'Bob');
  await waitForChannels(alice.page, [bob.id]);
  await waitForChannels(bob.page, [alice.id]);

  // Chat, both ways, through the chat box.
  const lines = ['hello Bob 👋', 'second line with "quotes" & <tags>', 'x'.repeat(2000)];
  for (const line of lines) {
    await alice.page.fill('#chat-input', line);
    await alice.page.press('#chat-input', 'Enter');
  }
  await bob.page.fill('#chat-input', 'hi Alice');
  await bob.page.press('#chat-input', 'Enter');
  await bob.page.waitForFunction((n) => window.switchboardApp.chat.filter((m) => !m.mine).length >= n, lines.length, { timeout: 10000 });
  await alice.page.waitForFunction(() => window.switchboardApp.chat.some((m) => !m.mine && m.text === 'hi Alice'), null, { timeout: 10000 });
  const got = await bob.page.evaluate(() => window.switchboardApp.chat.filter((m) => !m.mine).map((m) => ({ text: m.text, from: m.fromId })));
  assert.deepEqual(got.map((m) => m.text), lines, 'chat arrives complete and in order');
  assert.ok(got.every((m) => m.from === alice.id));
  const shown = await bob.page.locator('#chat-log li:not(.system):not(.mine) .text').allTextContents();
  assert.deepEqual(shown, lines, 'chat shown in the receiver\'s chat panel');
  assert.equal(await alice.page.inputValue('#chat-input'), '', 'the chat box is cleared after Enter');

  // A 20 MiB random file through the file input.
  const size = 20 * 1024 * 1024;
  const file = path.join(tmp, 'random-20MiB.bin');
  const data = crypto.randomBytes(size);
  fs.writeFileSync(file, data);
  const sha = crypto.createHash('sha256').update(data).digest('hex');
  await alice.page.click('.tabs button[data-tab="files"]');
  await bob.page.click('.tabs button[data-tab="files"]');
  const t0 = Date.now();
  await alice.page.setInputFiles('#file-input', file);
  await bob.page.waitForFunction(() => window.switchboardApp.files.length > 0, null, { timeout: 90000 });
  const seconds = (Date.now() - t0) / 1000;
  const [rx] = await bob.page.evaluate(() => window.switchboardApp.files);
  assert.equal(rx.name, 'random-20MiB.bin');
  assert.equal(rx.size, size);
  assert.equal(rx.sha256, sha, 'SHA-256 of the received file equals the sent file\'s');
  assert.equal(rx.checksumOk, true, 'the receiver verified the checksum');
  const rxItem = bob.page.locator('#file-list li[data-direction="receive"]');
  assert.equal(await rxItem.locator('progress').evaluate((p) => p.value), 100, 'receiver progress bar at 100 %');
  assert.match(await rxItem.locator('.status').textContent(), /checksum OK/);
  assert.equal(await rxItem.locator('a[download]').getAttribute('download'), 'random-20MiB.bin');
  // The sender's row reaches 100 % and reports the receiver's verification.
  await alice.page.waitForFunction(() => /checksum OK/.test(document.querySelector('#file-list li[data-direction="send"] .status')?.textContent || ''), null, { timeout: 20000 });
  assert.equal(await alice.page.locator('#file-list li[data-direction="send"] progress').evaluate((p) => p.value), 100, 'sender progress bar at 100 %');
  // The download link serves the same bytes.
  const downloaded = await bob.page.evaluate(async () => {
    const a = document.querySelector('#file-list li[data-direction="receive"] a[download]');
    const buf = await (await fetch(a.href)).arrayBuffer();
    const d = await crypto.subtle.digest('SHA-256', buf);
    return Array.from(new Uint8Array(d), (b) => b.toString(16).padStart(2, '0')).join('');
  });
  assert.equal(downloaded, sha);
  console.log(`20 MiB file transferred and verified in ${seconds.toFixed(1)} s (${((size * 8) / seconds / 1e6).toFixed(0)} Mbit/s)`);
});
