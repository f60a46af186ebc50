// The native CLI through TURN with Chromium: `switchboard join --relay-only` (relayed candidates only, trickled to
// the browser) talks to a browser that is itself relay-only, and to one that offers host candidates. Chat flows both
// ways, the browser reports a relay path, and the TURN server's turn_relayed_bytes_total grows.
//
//   node --test tests/native/relay.test.mjs     (binary: SWITCHBOARD_BIN or target/debug/switchboard)
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { Harness, until, mediaCounters, httpGet, waitForChannels } from '../e2e/lib/harness.mjs';
import { startCli, killAll } from './lib.mjs';

const h = new Harness();
after(async () => {
  killAll();
  await h.close();
});

async function relayedBytes(server) {
  const { body } = await httpGet(server, '/metrics');
  return body
    .split('\n')
    .filter((l) => l.startsWith('turn_relayed_bytes_total'))
    .reduce((sum, l) => sum + Number(l.split(' ').pop()), 0);
}

for (const browserRelay of [true, false]) {
  test(`CLI --relay-only with a ${browserRelay ? 'relay-only' : 'host-candidate'} browser: chat both ways over TURN`, { timeout: 90000 }, async () => {
    const server = await h.startServer(); // with its STUN/TURN server on a free port
    const browser = await h.launchBrowser();
    const room = `relay-${crypto.randomBytes(3).toString('hex')}`;
    const web = await h.join(browser, server, room, 'Web', { relay: browserRelay });
    const before = await relayedBytes(server);
    const cli = startCli([server.url, '--room', room, '--name', 'CLI', '--relay-only'], { RUST_LOG: 'warn' });
    const fail = (what) => `${what}\n${cli.log('cli')}\nbrowser console:\n${web.console.join('\n')}\nserver log (tail):\n${server.log.slice(-20).join('\n')}`;
    const joinedLine = await until(() => cli.stderr.find((l) => l.startsWith('joined room')) || cli.exited, { timeout: 20000, what: 'CLI joined' });
    assert.ok(typeof joinedLine === 'string', fail('CLI exited'));
    const cliId = joinedLine.match(/\((p_[^)]+)\)/)?.[1];
    await until(() => cli.stderr.some((l) => l.startsWith('* relayed candidate for Web (TURN over udp)')), { timeout: 20000, what: 'CLI relayed candidate' }).catch((e) =>
      assert.fail(fail(e.message)),
    );
    await waitForChannels(web.page, [cliId], 30000).catch((e) => assert.fail(fail(`browser channels: ${e.message}`)));
    await until(() => cli.stderr.some((l) => l === '* connected to Web'), { timeout: 20000, what: 'CLI connected' }).catch((e) => assert.fail(fail(e.message)));

    await web.page.evaluate(() => window.switchboardApp.sendChat('hello over the relay'));
    await until(() => cli.stdout.includes('Web: hello over the relay'), { timeout: 15000, what: 'chat at the CLI' }).catch((e) => assert.fail(fail(e.message)));
    cli.proc.stdin.write('relayed back\n');
    await until(() => web.page.evaluate(() => window.switchboardApp.chat.some((m) => m.from === 'CLI' && m.text === 'relayed back')), { timeout: 15000, what: 'chat in the browser' }).catch(
      (e) => assert.fail(fail(e.message)),
    );

    const stats = await until(async () => {
      const c = (await mediaCounters(web.page))[cliId];
      return c && c.path && c;
    }, { timeout: 10000, what: 'browser path stats' });
    assert.equal(stats.path, 'relay', fail(JSON.stringify(stats)));
    assert.equal(stats.remote, 'relay', fail(`the browser's remote candidate is the CLI's relay: ${JSON.stringify(stats)}`));
    if (browserRelay) assert.equal(stats.local, 'relay', fail(JSON.stringify(stats)));
    const after_ = await relayedBytes(server);
    assert.ok(after_ > before, `turn_relayed_bytes_total did not grow (${before} -> ${after_})`);

    cli.proc.stdin.end();
    const st = await cli.wait();
    assert.equal(st.code, 0, fail('CLI exit status'));
  });
}
