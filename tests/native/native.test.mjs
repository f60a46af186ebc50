// Native CLI (`switchboard join`, str0m) <-> browser SDK interop: one Chromium page in the demo app and the CLI in
// the same room exchange chat both ways and a 20 MiB file each way, with equal SHA-256 on both ends.
//
//   node --test tests/native/      (binary: SWITCHBOARD_BIN, else target/debug/switchboard; NATIVE_FILE_MIB to resize)
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Harness, until, waitForChannels } from '../e2e/lib/harness.mjs';
import { killAll, startCli } from './lib.mjs';

const MIB = Number(process.env.NATIVE_FILE_MIB || 20);
const FILE_SIZE = MIB * 1024 * 1024 + 77; // not a multiple of the 16 KiB chunk

const h = new Harness();
after(async () => {
  killAll();
  await h.close();
});

function sha256File(file) {
  return crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

test('CLI and browser: chat both ways, a file each way with equal SHA-256', { timeout: 240000 }, async () => {
  const server = await h.startServer({ args: ['--no-turn'] });
  const browser = await h.launchBrowser();
  const room = `native-${crypto.randomBytes(3).toString('hex')}`;
  const web = await h.join(browser, server, room, 'Web');

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sb-native-'));
  const recvDir = path.join(dir, 'recv');
  const cliFile = path.join(dir, 'from-cli.bin');
  fs.writeFileSync(cliFile, crypto.randomBytes(FILE_SIZE));
  const cliSha = sha256File(cliFile);

  // The CLI joins later, so it offers (protocol.md mesh rule); it sends its file as soon as the Web page is connected.
  const cli = startCli([server.url, '--room', room, '--name', 'CLI', '--send-file', cliFile, '--receive-dir', recvDir]);
  const failMsg = (what) => `${what}\n${cli.log()}\nbrowser console:\n${web.console.join('\n')}\nserver log (tail):\n${server.log.slice(-20).join('\n')}`;

  const joinedLine = await until(() => cli.stderr.find((l) => l.startsWith('joined room')) || cli.exited, { timeout: 20000, what: 'CLI joined' })
    .catch((e) => assert.fail(failMsg(e.message)));
  assert.ok(typeof joinedLine === 'string', failMsg(`CLI exited: ${JSON.stringify(cli.exited)}`));
  const cliId = joinedLine.match(/\((p_[^)]+)\)/)?.[1];
  assert.ok(cliId, failMsg(`no participant id in "${joinedLine}"`));

  await waitForChannels(web.page, [cliId], 30000).catch((e) => assert.fail(failMsg(`browser channels to CLI: ${e.message}`)));
  await until(() => cli.stderr.some((l) => l === '* connected to Web'), { timeout: 20000, what: 'CLI connected to Web' })
    .catch((e) => assert.fail(failMsg(e.message)));

  // Chat: browser -> CLI (printed as "<name>: text"), CLI stdin -> browser app.
  await web.page.evaluate(() => window.switchboardApp.sendChat('hello from the browser'));
  await until(() => cli.stdout.includes('Web: hello from the browser'), { timeout: 15000, what: 'chat at the CLI' })
    .catch((e) => assert.fail(failMsg(e.message)));
  cli.proc.stdin.write('hello from the terminal\n');
  await until(
    () => web.page.evaluate(() => window.switchboardApp.chat.some((m) => !m.mine && m.from === 'CLI' && m.text === 'hello from the terminal')),
    { timeout: 15000, what: 'chat in the browser' },
  ).catch((e) => assert.fail(failMsg(e.message)));

  // File CLI -> browser: the app verifies the SHA-256 and acks; the CLI prints the confirmation.
  const got = await until(
    () => web.page.evaluate(() => window.switchboardApp.files.find((f) => f.name === 'from-cli.bin')),
    { timeout: 180000, interval: 500, what: 'CLI file in the browser' },
  ).catch((e) => assert.fail(failMsg(e.message)));
  assert.equal(got.checksumOk, true, failMsg('browser checksum'));
  assert.equal(got.size, FILE_SIZE);
  assert.equal(got.sha256, cliSha);
  assert.equal(got.from, cliId);
  await until(() => cli.stdout.some((l) => l === `sent ${cliFile} to Web (${FILE_SIZE} bytes, sha256 OK)`), { timeout: 20000, what: 'CLI send confirmation' })
    .catch((e) => assert.fail(failMsg(e.message)));

  // File browser -> CLI: built in the page, hashed there, sent with the app's sendFile (resolves on the CLI's ack).
  const sent = await web.page.evaluate(async (size) => {
    const buf = new Uint8Array(size);
    for (let off = 0; off < size; off += 65536) crypto.getRandomValues(buf.subarray(off, Math.min(size, off + 65536)));
    const hex = (b) => Array.from(new Uint8Array(b), (x) => x.toString(16).padStart(2, '0')).join('');
    const sha256 = hex(await crypto.subtle.digest('SHA-256', buf));
    const results = await window.switchboardApp.sendFile(new File([buf], 'from-web.bin', { type: 'application/octet-stream' }));
    return { sha256, results };
  }, FILE_SIZE);
  assert.equal(sent.results.length, 1, failMsg('one receiver'));
  assert.equal(sent.results[0].ok, true, failMsg(`CLI ack: ${JSON.stringify(sent.results)}`));
  assert.equal(sent.results[0].sha256, sent.sha256);
  const recvPath = path.join(recvDir, 'from-web.bin');
  await until(() => cli.stdout.some((l) => l === `received ${recvPath} (${FILE_SIZE} bytes, sha256 OK) from Web`), { timeout: 20000, what: 'CLI receive line' })
    .catch((e) => assert.fail(failMsg(e.message)));
  assert.equal(sha256File(recvPath), sent.sha256, 'file on disk matches the browser hash');

  // Leaving: stdin EOF ends the CLI (its file was delivered); the browser sees it leave.
  cli.proc.stdin.end();
  process.kill(cli.proc.pid, 'SIGINT');
  await until(() => cli.exited, { timeout: 10000, what: 'CLI exit' }).catch((e) => assert.fail(failMsg(e.message)));
  assert.equal(cli.exited.code, 0, failMsg('CLI exit status'));
  await until(
    () => web.page.evaluate((id) => window.switchboardApp.events.some((e) => e.type === 'participant_left' && e.id === id), cliId),
    { timeout: 10000, what: 'participant_left in the browser' },
  );
  fs.rmSync(dir, { recursive: true, force: true });
});

test('browser joins after the CLI: the browser offers, the CLI answers; chat and a file each way', { timeout: 120000 }, async () => {
  const server = await h.startServer({ args: ['--no-turn'] });
  const browser = await h.launchBrowser();
  const room = `native-b-${crypto.randomBytes(3).toString('hex')}`;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sb-native-'));
  const recvDir = path.join(dir, 'recv');
  const size = 1024 * 1024 + 5;
  const cliFile = path.join(dir, 'early.bin');
  fs.writeFileSync(cliFile, crypto.randomBytes(size));

  const cli = startCli([server.url, '--room', room, '--name', 'Term', '--send-file', cliFile, '--receive-dir', recvDir]);
  const joinedLine = await until(() => cli.stderr.find((l) => l.startsWith('joined room')) || cli.exited, { timeout: 20000, what: 'CLI joined' });
  assert.ok(typeof joinedLine === 'string', cli.log());
  const cliId = joinedLine.match(/\((p_[^)]+)\)/)?.[1];

  const web = await h.join(browser, server, room, 'Late');
  const failMsg = (what) => `${what}\n${cli.log()}\nbrowser console:\n${web.console.join('\n')}`;
  await waitForChannels(web.page, [cliId], 30000).catch((e) => assert.fail(failMsg(e.message)));

  cli.proc.stdin.write('first!\n');
  await until(
    () => web.page.evaluate(() => window.switchboardApp.chat.some((m) => m.from === 'Term' && m.text === 'first!')),
    { timeout: 15000, what: 'chat in the browser' },
  ).catch((e) => assert.fail(failMsg(e.message)));
  await web.page.evaluate(() => window.switchboardApp.sendChat('welcome'));
  await until(() => cli.stdout.includes('Late: welcome'), { timeout: 15000, what: 'chat at the CLI' }).catch((e) => assert.fail(failMsg(e.message)));

  const got = await until(() => web.page.evaluate(() => window.switchboardApp.files.find((f) => f.name === 'early.bin')), { timeout: 60000, what: 'file in the browser' })
    .catch((e) => assert.fail(failMsg(e.message)));
  assert.equal(got.checksumOk, true);
  assert.equal(got.sha256, sha256File(cliFile));

  const sent = await web.page.evaluate(async (n) => {
    const buf = new Uint8Array(n);
    for (let i = 0; i < n; i++) buf[i] = (i * 31 + 7) & 0xff;
    const results = await window.switchboardApp.sendFile(new File([buf], 'late.bin'));
    return results;
  }, size);
  assert.equal(sent[0]?.ok, true, failMsg(JSON.stringify(sent)));
  const recvPath = path.join(recvDir, 'late.bin');
  await until(() => cli.stdout.some((l) => l === `received ${recvPath} (${size} bytes, sha256 OK) from Late`), { timeout: 20000, what: 'CLI receive line' })
    .catch((e) => assert.fail(failMsg(e.message)));
  assert.equal(sha256File(recvPath), sent[0].sha256);

  // The browser leaves: the CLI sees it.
  await web.page.evaluate(() => window.switchboardApp.room.leave());
  await until(() => cli.stderr.some((l) => l === '* Late left (left)'), { timeout: 10000, what: 'CLI sees the browser leave' })
    .catch((e) => assert.fail(failMsg(e.message)));
  process.kill(cli.proc.pid, 'SIGINT');
  await until(() => cli.exited, { timeout: 10000, what: 'CLI exit' });
  fs.rmSync(dir, { recursive: true, force: true });
});
