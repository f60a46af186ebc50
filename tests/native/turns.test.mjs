// TURN over TLS and TURN credential renewal with Chromium:
// 1. `switchboard join --relay --ca-file cert.pem --ice-servers '[turns:...]'`: the CLI can only relay over TLS
//    (its UDP and TCP TURN URLs lead nowhere) to a relay-only browser; chat both ways and a file with equal
//    SHA-256; the server's turn_relayed_bytes_total grows.
// 2. With `ice.credential-ttl-secs = 5` the server pushes `ice_servers` before the credentials expire: the browser
//    SDK emits `ice_servers` and its RTCPeerConnection's configuration carries the new TURN username.
// 3. With a 10 s credential lifetime, a relay-only CLI <-> relay-only Chromium call carries one chat line a second
//    for over 3x that lifetime: the CLI replaces its allocation at each renewal (our TURN server answers 441 to new
//    credentials on an allocation), ICE restarts, and nothing is lost.
//
//   node --test tests/native/turns.test.mjs     (binary: SWITCHBOARD_BIN or target/debug/switchboard; openssl)
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import net from 'node:net';
import { Harness, until, mediaCounters, httpGet, waitForChannels } from '../e2e/lib/harness.mjs';
import { startCli, killAll } from './lib.mjs';

const h = new Harness();
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sb-turns-'));
after(async () => {
  killAll();
  await h.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

const SECRET = 'turns-test-secret';

async function relayedBytes(server) {
  const { body } = await httpGet(server, '/metrics');
  return body
    .split('\n')
    .filter((l) => l.startsWith('turn_relayed_bytes_total'))
    .reduce((sum, l) => sum + Number(l.split(' ').pop()), 0);
}

/** coturn-style REST credentials valid for an hour. */
function restCredentials(user) {
  const username = `${Math.floor(Date.now() / 1000) + 3600}:${user}`;
  const credential = crypto.createHmac('sha1', SECRET).update(username).digest('base64');
  return { username, credential };
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

test('CLI --relay with only TURN over TLS reachable (--ca-file) and a relay-only browser: chat and a file', { timeout: 120000 }, async () => {
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1', '-subj', '/CN=localhost',
    '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1', '-addext', 'basicConstraints=critical,CA:FALSE', '-keyout', key, '-out', cert], { stdio: 'ignore' });
  const server = await h.startServer({
    env: { SWITCHBOARD_TURN_CERT: cert, SWITCHBOARD_TURN_PKEY: key, SWITCHBOARD_TURN_TLS_LISTENING_PORT: '0', SWITCHBOARD_TURN_STATIC_AUTH_SECRET: SECRET },
  });
  const tlsPort = server.log.map((l) => l.match(/listening turn-tls 127\.0\.0\.1:(\d+)/)?.[1]).find(Boolean);
  assert.ok(tlsPort, `no turn-tls listener:\n${server.log.join('\n')}`);
  const browser = await h.launchBrowser();
  const room = `turns-${crypto.randomBytes(3).toString('hex')}`;
  const web = await h.join(browser, server, room, 'Web', { relay: true });
  const advertised = await web.page.evaluate(() => window.switchboardApp.room.iceServers.flatMap((s) => [].concat(s.urls)));
  assert.ok(advertised.includes(`turns:127.0.0.1:${tlsPort}?transport=tcp`), `joined.ice_servers: ${advertised.join(' ')}`);

  const dead = await freePort();
  const ice = [{ urls: [`turn:127.0.0.1:${dead}?transport=udp`, `turn:127.0.0.1:${dead}?transport=tcp`, `turns:localhost:${tlsPort}?transport=tcp`], ...restCredentials('cli') }];
  const file = path.join(dir, 'over-tls.bin');
  fs.writeFileSync(file, crypto.randomBytes(2 * 1024 * 1024 + 5));
  const sha = crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
  const before = await relayedBytes(server);
  const cli = startCli([server.url, '--room', room, '--name', 'CLI', '--relay', '--ca-file', cert, '--ice-servers', JSON.stringify(ice), '--send-file', file], { RUST_LOG: 'warn' });
  const fail = (what) => `${what}\n${cli.log('cli')}\nbrowser console:\n${web.console.join('\n')}\nserver log (tail):\n${server.log.slice(-20).join('\n')}`;
  const joinedLine = await until(() => cli.stderr.find((l) => l.startsWith('joined room')) || cli.exited, { timeout: 20000, what: 'CLI joined' });
  assert.ok(typeof joinedLine === 'string', fail('CLI exited'));
  const cliId = joinedLine.match(/\((p_[^)]+)\)/)?.[1];
  await until(() => cli.stderr.some((l) => l.startsWith('* relayed candidate for Web (TURN over tls)')), { timeout: 30000, what: 'CLI relayed candidate over TLS' }).catch((e) =>
    assert.fail(fail(e.message)),
  );
  await waitForChannels(web.page, [cliId], 30000).catch((e) => assert.fail(fail(`browser channels: ${e.message}`)));

  await web.page.evaluate(() => window.switchboardApp.sendChat('hello over TLS'));
  await until(() => cli.stdout.includes('Web: hello over TLS'), { timeout: 15000, what: 'chat at the CLI' }).catch((e) => assert.fail(fail(e.message)));
  cli.proc.stdin.write('back over TLS\n');
  await until(() => web.page.evaluate(() => window.switchboardApp.chat.some((m) => m.from === 'CLI' && m.text === 'back over TLS')), { timeout: 15000, what: 'chat in the browser' }).catch(
    (e) => assert.fail(fail(e.message)),
  );
  const got = await until(() => web.page.evaluate(() => window.switchboardApp.files.find((f) => f.name === 'over-tls.bin')), { timeout: 60000, what: 'file in the browser' }).catch(
    (e) => assert.fail(fail(e.message)),
  );
  assert.equal(got.sha256, sha, fail('file checksum'));
  const stats = await until(async () => (await mediaCounters(web.page))[cliId]?.path && (await mediaCounters(web.page))[cliId], { timeout: 10000, what: 'browser path stats' });
  assert.equal(stats.remote, 'relay', fail(`the browser's remote candidate is the CLI's relay: ${JSON.stringify(stats)}`));
  const after_ = await relayedBytes(server);
  assert.ok(after_ - before > 2 * 1024 * 1024, `turn_relayed_bytes_total grew by ${after_ - before} only`);
  cli.proc.stdin.end();
  assert.equal((await cli.wait()).code, 0, fail('CLI exit status'));
});

test('the SDK applies pushed ice_servers (renewed TURN credentials) to its peer connections', { timeout: 90000 }, async () => {
  const server = await h.startServer({ env: { SWITCHBOARD_ICE_CREDENTIAL_TTL_SECS: '5' } });
  const browser = await h.launchBrowser();
  const room = `renew-${crypto.randomBytes(3).toString('hex')}`;
  const alice = await h.join(browser, server, room, 'Alice', { relay: true });
  const bob = await h.join(browser, server, room, 'Bob', { relay: true });
  await waitForChannels(alice.page, [bob.id], 30000);
  const turnUser = (servers) => servers.find((s) => s.username)?.username;
  const first = await alice.page.evaluate(() => {
    window.__iceEvents = [];
    window.switchboardApp.room.on('ice_servers', (s) => window.__iceEvents.push(s));
    return window.switchboardApp.room.iceServers;
  });
  const firstUser = turnUser(first);
  assert.match(firstUser, /^\d+:p_/, JSON.stringify(first));
  // Pushed at 80 % of 5 s after the join, then every 4 s.
  const pushed = await until(() => alice.page.evaluate(() => window.__iceEvents[0] || null), { timeout: 10000, what: 'ice_servers event' });
  const renewed = turnUser(pushed);
  assert.ok(Number(renewed.split(':')[0]) > Number(firstUser.split(':')[0]), `${firstUser} -> ${renewed}`);
  const state = await alice.page.evaluate((id) => {
    const pc = window.switchboardApp.room.getPeerConnection(id);
    return { config: pc.getConfiguration().iceServers, room: window.switchboardApp.room.iceServers, connection: pc.connectionState };
  }, bob.id);
  assert.equal(turnUser(state.room), renewed);
  assert.ok(state.config.some((s) => s.username === renewed), `pc configuration: ${JSON.stringify(state.config)}`);
  assert.equal(state.connection, 'connected');
});

test('a relayed CLI <-> Chromium call outlives 3x its TURN credentials (10 s TTL, renewed by ice_servers pushes)', { timeout: 120000 }, async () => {
  const TTL = 10;
  const server = await h.startServer({ env: { SWITCHBOARD_ICE_CREDENTIAL_TTL_SECS: String(TTL) } });
  const browser = await h.launchBrowser();
  const room = `long-${crypto.randomBytes(3).toString('hex')}`;
  const web = await h.join(browser, server, room, 'Web', { relay: true });
  const cli = startCli([server.url, '--room', room, '--name', 'CLI', '--relay'], { RUST_LOG: 'info' });
  const fail = (what) => `${what}\n${cli.log('cli')}\nbrowser console:\n${web.console.slice(-30).join('\n')}\nserver log (tail):\n${server.log.slice(-20).join('\n')}`;
  const joinedLine = await until(() => cli.stderr.find((l) => l.startsWith('joined room')) || cli.exited, { timeout: 20000, what: 'CLI joined' });
  assert.ok(typeof joinedLine === 'string', fail('CLI exited'));
  const cliId = joinedLine.match(/\((p_[^)]+)\)/)?.[1];
  await waitForChannels(web.page, [cliId], 30000).catch((e) => assert.fail(fail(`browser channels: ${e.message}`)));
  // One chat line a second for over 3x the credentials' lifetime, each due in the browser within 2 s.
  const n = 3 * TTL + 4;
  let late = 0;
  for (let i = 0; i < n; i++) {
    const text = `tick ${i}`;
    const sent = Date.now();
    cli.proc.stdin.write(`${text}\n`);
    const ok = await until(() => web.page.evaluate((t) => window.switchboardApp.chat.some((m) => m.from === 'CLI' && m.text === t), text), { timeout: 2000, interval: 50, what: text }).catch(() => false);
    if (!ok) late++;
    await new Promise((r) => setTimeout(r, Math.max(0, 1000 - (Date.now() - sent))));
  }
  const replaced = cli.stderr.filter((l) => l.includes('replacing the allocation')).length;
  const delivered = await web.page.evaluate(() => window.switchboardApp.chat.filter((m) => m.from === 'CLI' && m.text.startsWith('tick ')).length);
  console.log(`chat: ${delivered}/${n} delivered, ${late} later than 2 s; CLI allocation replacements: ${replaced}`);
  assert.ok(replaced >= 3, fail(`only ${replaced} TURN allocation replacements in ${n} s`));
  assert.equal(delivered, n, fail('chat lost'));
  assert.ok(late <= 1, fail(`${late} chat lines later than 2 s`));
  await web.page.evaluate(() => window.switchboardApp.sendChat('still here'));
  await until(() => cli.stdout.includes('Web: still here'), { timeout: 10000, what: 'chat at the CLI' }).catch((e) => assert.fail(fail(e.message)));
  cli.proc.stdin.end();
  await cli.wait();
});
