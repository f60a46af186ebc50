// The native CLI (`switchboard join`, str0m) behind real NATs (nftables masquerade in network namespaces):
//   (7) CLI behind a symmetric NAT (A), Chromium behind an endpoint-independent NAT (B): chat both ways and a 5 MiB
//       file CLI -> browser with a verified SHA-256, through the TURN relay (turn_relayed_bytes_total grows);
//   (8) CLI <-> CLI, both behind endpoint-independent NATs: a direct pair (hole punching with the server-reflexive
//       candidates the CLI gathered via STUN) as each CLI reports it; a 2 MiB file sent then (`/send`) arrives with
//       sha256 OK over that flow and TURN relays ~0 bytes of it;
//   (13) CLI behind a corporate firewall (no UDP, TCP only to 443/8080) + Chromium behind an EIM NAT: the CLI falls
//       back to TURN over TLS on 443 (trusting the server's self-signed certificate with --ca-file), chat + 1 MiB;
//   (14) CLI <-> Chromium behind EIM NATs, then the server is SIGKILLed: chat keeps flowing both ways for 10 s.
// Run: sudo node --test --test-concurrency=1 tests/netlab/   (see docs/nat-traversal.md)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { until, peerStats, describePair, sleep } from './lib/lab.mjs';
import { withLab, skipReason } from './lib/scenario.mjs';

const MIB = 1024 * 1024;
// The CLI logs its TURN allocations at info level (client::peer), the rest at warn.
const CLI_ENV = { RUST_LOG: process.env.RUST_LOG || 'warn,client=info' };

function randomFile(dir, name, size) {
  const file = path.join(dir, name);
  fs.writeFileSync(file, crypto.randomBytes(size));
  return { file, sha256: crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex'), size };
}

/** Waits for the CLI's `joined room R as N (p_...)` line; returns its participant id. */
async function cliJoined(cli, fail) {
  const line = await until(() => cli.stderr.find((l) => l.startsWith('joined room')) || cli.exited, { timeout: 20000, what: 'CLI joined' }).catch((e) =>
    assert.fail(fail(e.message)),
  );
  assert.ok(typeof line === 'string', fail(`CLI exited before joining: ${JSON.stringify(cli.exited)}`));
  const id = line.match(/\((p_[^)]+)\)/)?.[1];
  assert.ok(id, fail(`no participant id in "${line}"`));
  return id;
}

const waitLine = (cli, stream, pred, what, fail, timeout = 20000) =>
  until(() => cli[stream].find(pred) || (cli.exited && Promise.reject(new Error(`CLI exited ${JSON.stringify(cli.exited)}`))), { timeout, what }).catch((e) =>
    assert.fail(fail(e.message)),
  );

/** Waits until the app in `web` shows chat line `text` from `from`. */
const browserGotChat = (web, from, text, fail, timeout = 15000) =>
  until(() => web.page.evaluate(({ from, text }) => window.switchboardApp.chat.some((m) => !m.mine && m.from === from && m.text === text), { from, text }), {
    timeout,
    what: `chat "${text}" in the browser`,
  }).catch((e) => assert.fail(fail(e.message)));

/** Chat both ways between the browser "Web" and the CLI "CLI": `toCli` from the app, `toWeb` on the CLI's stdin. */
async function chatBothWays(cli, web, fail, toCli, toWeb, timeout = 15000) {
  await web.page.evaluate((t) => window.switchboardApp.sendChat(t), toCli);
  await waitLine(cli, 'stdout', (l) => l === `Web: ${toCli}`, `chat "${toCli}" at the CLI`, fail, timeout);
  cli.proc.stdin.write(`${toWeb}\n`);
  await browserGotChat(web, 'CLI', toWeb, fail, timeout);
}

/** Stops a CLI: stdin EOF (leave), then SIGINT; resolves with its exit status (close() SIGKILLs leftovers). */
async function stopCli(cli) {
  if (cli.exited) return cli.exited;
  cli.proc.stdin.end();
  try {
    return await until(() => cli.exited, { timeout: 3000, interval: 100, what: 'CLI exit on EOF' });
  } catch (_) {
    try {
      process.kill(cli.pid, 'SIGINT');
    } catch (_e) {
      /* gone */
    }
    return until(() => cli.exited, { timeout: 5000, interval: 100, what: 'CLI exit on SIGINT' }).catch(() => null);
  }
}

/** UDP conntrack entries of router `r` (with byte counters when accounting is on), one line each. */
function conntrackUdp(lab, r) {
  try {
    return lab.exec(r, 'conntrack', ['-L', '-p', 'udp'], 5000).split('\n').filter((l) => l.trim());
  } catch (e) {
    return [`(conntrack failed: ${e.message.split('\n')[0]})`];
  }
}

test('(7) native CLI behind a symmetric NAT + Chromium behind an EIM NAT: chat both ways, 5 MiB file via TURN', { skip: skipReason || false, timeout: 100000 }, async (t) => {
  await withLab(t, 'cli-symmetric', { a: { nat: 'symmetric' }, b: { nat: 'eim' } }, async ({ lab }) => {
    const room = 'cli-sym-room';
    const web = await lab.join('b', room, 'Web');
    const f = randomFile(lab.tmp, 'from-cli.bin', 5 * MIB + 77);
    const before = lab.turnRelayedBytes();
    const cli = lab.startCli('a', ['--room', room, '--token', lab.token(room, 'cli-a', 'CLI'), '--name', 'CLI', '--send-file', f.file], { env: CLI_ENV });
    const fail = (what) => `${what}\n${cli.log()}\nbrowser console (tail):\n${web.console.slice(-20).join('\n')}\nserver log (tail):\n${(lab.server?.log || []).slice(-20).join('\n')}`;
    const cliId = await cliJoined(cli, fail);

    await web.page
      .waitForFunction(
        (id) => ['data', 'file'].every((k) => window.switchboardApp.room.peers.get(id)?.channels?.[k]?.readyState === 'open'),
        cliId,
        { timeout: 30000 },
      )
      .catch((e) => assert.fail(fail(`browser data channels to the CLI: ${e.message}`)));
    await waitLine(cli, 'stderr', (l) => l === '* connected to Web', 'CLI connected to Web', fail);

    await chatBothWays(cli, web, fail, 'hello from behind NAT B', 'hello from behind the symmetric NAT');

    const got = await until(() => web.page.evaluate(() => window.switchboardApp.files.find((x) => x.name === 'from-cli.bin')), {
      timeout: 60000,
      interval: 500,
      what: 'CLI file in the browser',
    }).catch((e) => assert.fail(fail(e.message)));
    assert.equal(got.checksumOk, true, fail(`browser checksum: ${JSON.stringify(got)}`));
    assert.equal(got.size, f.size);
    assert.equal(got.sha256, f.sha256);
    assert.equal(got.from, cliId);
    await waitLine(cli, 'stdout', (l) => l === `sent ${f.file} to Web (${f.size} bytes, sha256 OK)`, 'CLI send confirmation', fail);

    const s = (await peerStats(web.page))[cliId];
    lab.note(`Web (B) selected pair to the CLI: ${describePair(s)}`);
    await waitLine(cli, 'stderr', (l) => l.startsWith('* path to Web:'), 'the CLI reporting its path to Web', fail, 5000);
    const cliPaths = cli.stderr.filter((l) => l.startsWith('* path to Web:'));
    for (const l of cliPaths) lab.note(`CLI: ${l}`);
    assert.match(cliPaths.at(-1) || '', /: relayed \((our|their|both) TURN[^)]*\) udp .*203\.0\.113\.1:\d+/, fail("the CLI reports its pair to the browser as relayed"));
    for (const l of cli.stderr.filter((x) => /relayed candidate|TURN allocation ready|TURN over UDP failed/.test(x))) lab.note(`CLI: ${l.trim()}`);
    assert.equal(s?.path, 'relay', fail(`the browser's pair to the CLI goes through the relay: ${describePair(s)}`));
    const relayed = lab.turnRelayedBytes() - before;
    lab.note(`TURN relayed ${relayed} bytes (turn_relayed_bytes_total) for chat + a ${f.size}-byte file`);
    assert.ok(relayed > 0, `TURN relayed bytes (${relayed})`);
    assert.ok(relayed >= f.size, `TURN relayed at least the file (${relayed} < ${f.size})`);

    const st = await stopCli(cli);
    assert.equal(st?.code, 0, fail(`CLI exit status ${JSON.stringify(st)}`));
  });
});

/** Bytes (both directions) of each UDP flow between router `r` and `peerIp`, keyed by the flow's original tuple. */
function flowBytes(lab, r, peerIp) {
  const out = new Map();
  for (const l of conntrackUdp(lab, r).filter((x) => x.includes(`dst=${peerIp}`))) {
    const key = l.match(/src=\S+ dst=\S+ sport=\d+ dport=\d+/)?.[0] || l;
    out.set(key, [...l.matchAll(/bytes=(\d+)/g)].reduce((s, m) => s + Number(m[1]), 0));
  }
  return out;
}

test('(8) native CLI <-> native CLI behind EIM NATs: once ICE reports a direct pair, a 2 MiB file goes over it (sha256 OK), TURN relays ~0 bytes', { skip: skipReason || false, timeout: 80000 }, async (t) => {
  await withLab(t, 'cli-direct', { a: { nat: 'eim' }, b: { nat: 'eim' } }, async ({ lab }) => {
    const room = 'cli-direct-room';
    // Byte counters on the routers' conntrack entries: shows which flows carried the file.
    for (const r of ['ra', 'rb']) lab.exec(r, 'sysctl', ['-qw', 'net.netfilter.nf_conntrack_acct=1']);
    const recvDir = path.join(lab.tmp, 'recv-b');
    const f = randomFile(lab.tmp, 'a-to-b.bin', 2 * MIB + 33);
    const bee = lab.startCli('b', ['--room', room, '--token', lab.token(room, 'bee-b', 'Bee'), '--name', 'Bee', '--receive-dir', recvDir], { env: CLI_ENV });
    const fail0 = (what) => `${what}\n${bee.log('Bee')}\nserver log (tail):\n${(lab.server?.log || []).slice(-20).join('\n')}`;
    await cliJoined(bee, fail0);
    const ay = lab.startCli('a', ['--room', room, '--token', lab.token(room, 'ay-a', 'Ay'), '--name', 'Ay'], { env: CLI_ENV });
    const fail = (what) => `${what}\n${ay.log('Ay')}\n${bee.log('Bee')}\nserver log (tail):\n${(lab.server?.log || []).slice(-20).join('\n')}`;
    await cliJoined(ay, fail);
    await waitLine(bee, 'stderr', (l) => l === '* connected to Ay', 'Bee connected to Ay', fail, 30000);
    await waitLine(ay, 'stderr', (l) => l === '* connected to Bee', 'Ay connected to Bee', fail, 30000);

    // ICE may nominate a relayed pair first (it answers before the NATs' holes are punched) and move to the direct
    // pair moments later; each CLI prints the pair in use whenever it changes. Wait for the direct one on both sides.
    const pathLines = (cli, who) => cli.stderr.filter((l) => l.startsWith(`* path to ${who}:`));
    const isDirect = (lines) => lines.length > 0 && / direct udp /.test(lines[lines.length - 1]);
    await until(() => isDirect(pathLines(ay, 'Bee')) && isDirect(pathLines(bee, 'Ay')), { timeout: 30000, what: 'both CLIs on a direct pair' }).catch((e) =>
      assert.fail(fail(e.message)),
    );
    for (const l of [...pathLines(ay, 'Bee').map((x) => `Ay:  ${x}`), ...pathLines(bee, 'Ay').map((x) => `Bee: ${x}`)]) lab.note(l);
    assert.match(pathLines(ay, 'Bee').at(-1), /-> 203\.0\.113\.20:\d+$/, fail("Ay's direct pair goes to B's NAT"));
    assert.match(pathLines(bee, 'Ay').at(-1), /-> 203\.0\.113\.10:\d+$/, fail("Bee's direct pair goes to A's NAT"));

    const relayedBefore = lab.turnRelayedBytes();
    const flowsBefore = flowBytes(lab, 'ra', '203.0.113.20');
    ay.proc.stdin.write(`/send ${f.file}\n`);
    const recvPath = path.join(recvDir, 'a-to-b.bin');
    await waitLine(bee, 'stdout', (l) => l === `received ${recvPath} (${f.size} bytes, sha256 OK) from Ay`, 'Bee received the file', fail, 40000);
    await waitLine(ay, 'stdout', (l) => l === `sent ${f.file} to Bee (${f.size} bytes, sha256 OK)`, 'Ay send confirmation', fail);
    const relayed = lab.turnRelayedBytes() - relayedBefore;
    const flowsAfter = flowBytes(lab, 'ra', '203.0.113.20');
    assert.equal(crypto.createHash('sha256').update(fs.readFileSync(recvPath)).digest('hex'), f.sha256, 'file on disk matches');
    assert.ok(isDirect(pathLines(ay, 'Bee')) && isDirect(pathLines(bee, 'Ay')), fail('the pair stayed direct during the transfer'));

    // Chat both ways on the same path.
    ay.proc.stdin.write('hi from A\n');
    await waitLine(bee, 'stdout', (l) => l === 'Ay: hi from A', 'chat at Bee', fail, 15000);
    bee.proc.stdin.write('hi from B\n');
    await waitLine(ay, 'stdout', (l) => l === 'Bee: hi from B', 'chat at Ay', fail, 15000);

    // The routers' conntrack shows the flow between the two public NAT addresses (A 203.0.113.10 <-> B
    // 203.0.113.20) and how many bytes it carried during the transfer.
    const deltas = [...flowsAfter].map(([k, b]) => [k, b - (flowsBefore.get(k) || 0)]);
    for (const [k, d] of deltas) lab.note(`router A conntrack, direct flow ${k}: +${d} bytes during the transfer`);
    lab.note(`TURN relayed ${relayed} bytes (turn_relayed_bytes_total) during the ${f.size}-byte transfer`);
    assert.ok(deltas.length > 0, fail(`no UDP flow A -> 203.0.113.20 in router A's conntrack:\n${conntrackUdp(lab, 'ra').join('\n')}`));
    assert.ok(Math.max(...deltas.map(([, d]) => d)) > f.size, `the file went over one direct flow between the NATs (bytes per flow: ${deltas.map(([, d]) => d)})`);
    assert.ok(relayed < 50000, `TURN relayed ~0 bytes of the file (${relayed} bytes; keepalives and checks of relay candidates cost a few kB)`);

    for (const c of [ay, bee]) {
      const s = await stopCli(c);
      assert.equal(s?.code, 0, fail(`CLI exit status ${JSON.stringify(s)}`));
    }
  });
});

test('(13) native CLI behind a corporate firewall (no UDP, TCP only to 443/8080): TURN over TLS on 443, chat both ways and 1 MiB to Chromium', { skip: skipReason || false, timeout: 100000 }, async (t) => {
  let cert;
  const env = (lab) => {
    cert = lab.selfSignedCertificate();
    return { SWITCHBOARD_TURN_CERT: cert.cert, SWITCHBOARD_TURN_PKEY: cert.key, SWITCHBOARD_TURN_TLS_LISTENING_PORT: '443' };
  };
  await withLab(t, 'cli-web-only', { a: { nat: 'eim', webOnly: true }, b: { nat: 'eim' }, env }, async ({ lab }) => {
    const room = 'cli-tls-room';
    const web = await lab.join('b', room, 'Web');
    const f = randomFile(lab.tmp, 'tls.bin', MIB + 5);
    const before = lab.turnRelayedBytes();
    const cli = lab.startCli('a', ['--room', room, '--token', lab.token(room, 'cli-a', 'CLI'), '--name', 'CLI', '--ca-file', cert.cert, '--send-file', f.file], { env: CLI_ENV });
    const fail = (what) => `${what}\n${cli.log()}\nbrowser console (tail):\n${web.console.slice(-20).join('\n')}\nserver log (tail):\n${(lab.server?.log || []).slice(-20).join('\n')}`;
    const cliId = await cliJoined(cli, fail);
    await waitLine(cli, 'stderr', (l) => l === '* connected to Web', 'CLI connected to Web', fail, 60000);
    await chatBothWays(cli, web, fail, 'hello through the firewall', 'hello from behind the firewall');
    const got = await until(() => web.page.evaluate(() => window.switchboardApp.files.find((x) => x.name === 'tls.bin')), { timeout: 60000, interval: 500, what: 'CLI file in the browser' }).catch((e) =>
      assert.fail(fail(e.message)),
    );
    assert.equal(got.checksumOk, true, fail(`browser checksum: ${JSON.stringify(got)}`));
    assert.equal(got.sha256, f.sha256);

    for (const l of cli.stderr.filter((x) => /relayed candidate|TURN over \w+ failed|path to Web/.test(x))) lab.note(`CLI: ${l.trim()}`);
    const s = (await peerStats(web.page))[cliId];
    lab.note(`Web (B) selected pair to the CLI: ${describePair(s)}`);
    assert.ok(cli.stderr.some((l) => /^\* relayed candidate for Web \(TURN over tls\)/.test(l)), fail('the CLI got a relayed candidate over TLS'));
    assert.ok(!cli.stderr.some((l) => /^\* relayed candidate for Web \(TURN over (udp|tcp)\)/.test(l)), fail('no UDP/TCP allocation can get through the firewall'));
    // The CLI reports its pair from str0m's stats, once a second.
    await waitLine(cli, 'stderr', (l) => l.startsWith('* path to Web:'), 'the CLI reporting its path to Web', fail, 5000);
    const paths = cli.stderr.filter((l) => l.startsWith('* path to Web:'));
    assert.match(paths.at(-1), /: relayed \((our|both) TURN[^)]* over tls\)/, fail("the CLI's pair starts at its TURN-over-TLS allocation"));
    const relayed = lab.turnRelayedBytes() - before;
    lab.note(`TURN relayed ${relayed} bytes (turn_relayed_bytes_total) for chat + a ${f.size}-byte file`);
    assert.ok(relayed >= f.size, `TURN relayed at least the file (${relayed} < ${f.size})`);
    const st = await stopCli(cli);
    assert.equal(st?.code, 0, fail(`CLI exit status ${JSON.stringify(st)}`));
  });
});

test('(14) native CLI <-> Chromium behind EIM NATs: after the server is SIGKILLed, chat keeps flowing both ways for 10 s', { skip: skipReason || false, timeout: 100000 }, async (t) => {
  await withLab(t, 'cli-kill', { a: { nat: 'eim' }, b: { nat: 'eim' } }, async ({ lab }) => {
    const room = 'cli-kill-room';
    const web = await lab.join('b', room, 'Web');
    const cli = lab.startCli('a', ['--room', room, '--token', lab.token(room, 'cli-a', 'CLI'), '--name', 'CLI'], { env: CLI_ENV });
    const fail = (what) => `${what}\n${cli.log()}\nbrowser console (tail):\n${web.console.slice(-20).join('\n')}`;
    await cliJoined(cli, fail);
    await waitLine(cli, 'stderr', (l) => l === '* connected to Web', 'CLI connected to Web', fail, 30000);
    await lab.killServer();
    const t0 = Date.now();
    let n = 0;
    while (Date.now() - t0 < 10000) {
      n += 1;
      await chatBothWays(cli, web, (m) => fail(`${m} (${Date.now() - t0} ms after the kill)`), `web ${n}`, `cli ${n}`, 3000);
      await sleep(1000);
    }
    lab.note(`${n} chat round trips in the 10 s after the server was killed`);
    for (const l of cli.stderr.filter((x) => x.startsWith('* path to Web:'))) lab.note(`CLI: ${l}`);
    assert.ok(n >= 5, `chat kept flowing for 10 s (${n} rounds)`);
    assert.ok(cli.stderr.some((l) => /signaling (lost|disconnected)/.test(l)), fail('the CLI noticed the signaling server was gone'));
  });
});
