// Interop with an independent WebRTC implementation: aiortc (Python) joins through our signaling protocol
// (tests/native/aiortc_peer.py) and exchanges chat on the SDK's negotiated `data` channel with the native CLI
// (`switchboard join`, str0m), once with the CLI offering and once with aiortc offering, and once with the CLI
// relay-only through the server's TURN (aiortc using `joined.ice_servers`, its relayed candidates included).
//
//   node --test tests/native/aiortc.test.mjs     (needs python3 with aiortc; binary: SWITCHBOARD_BIN or target/debug)
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Harness, until } from '../e2e/lib/harness.mjs';
import { startCli, startProc, killAll } from './lib.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const PEER = path.join(HERE, 'aiortc_peer.py');
const h = new Harness();
after(async () => {
  killAll();
  await h.close();
});

let haveAiortc = true;
try {
  execFileSync('python3', ['-c', 'import aiortc'], { stdio: 'ignore' });
} catch (_) {
  haveAiortc = false;
}

async function exchange({ cliFirst, relay = false }) {
  const server = await h.startServer({ args: relay ? [] : ['--no-turn'] });
  const room = `aiortc-${crypto.randomBytes(3).toString('hex')}`;
  const fromPy = `hello from aiortc ${crypto.randomBytes(2).toString('hex')}`;
  const fromCli = `hello from the CLI ${crypto.randomBytes(2).toString('hex')}`;
  const startPy = () =>
    startProc('python3', [PEER, server.url, '--room', room, '--name', 'Py', '--send', fromPy, '--expect', fromCli, '--timeout', '60', ...(relay ? ['--use-ice-servers'] : [])]);
  let py;
  if (!cliFirst) {
    py = startPy();
    await until(() => py.stdout.find((l) => l.startsWith('JOINED')) || py.exited, { timeout: 20000, what: 'aiortc joined' });
    assert.ok(!py.exited, py.log('aiortc'));
  }
  const cli = startCli([server.url, '--room', room, '--name', 'CLI', ...(relay ? ['--relay-only'] : [])]);
  const fail = (what) => `${what}\n${cli.log('cli')}\n${py ? py.log('aiortc') : ''}\nserver log (tail):\n${server.log.slice(-20).join('\n')}`;
  await until(() => cli.stderr.find((l) => l.startsWith('joined room')) || cli.exited, { timeout: 20000, what: 'CLI joined' }).catch((e) =>
    assert.fail(fail(e.message)),
  );
  if (cliFirst) py = startPy();
  await until(() => cli.stderr.find((l) => l.startsWith('* connected to Py')) || cli.exited || py.exited, { timeout: 30000, what: 'CLI connected to aiortc' }).catch((e) =>
    assert.fail(fail(e.message)),
  );
  assert.ok(!cli.exited, fail('CLI exited'));
  cli.proc.stdin.write(`${fromCli}\n`);
  const status = await py.wait();
  assert.equal(status.code, 0, fail('aiortc did not get the chat'));
  assert.ok(py.stdout.includes(`CHAT CLI: ${fromCli}`), fail('aiortc output'));
  await until(() => cli.stdout.includes(`Py: ${fromPy}`), { timeout: 10000, what: 'chat from aiortc at the CLI' }).catch((e) => assert.fail(fail(e.message)));
  cli.proc.stdin.end();
  const st = await cli.wait();
  assert.equal(st.code, 0, fail('CLI exit status'));
}

test('aiortc offers to the CLI: chat both ways', { timeout: 90000, skip: !haveAiortc && 'aiortc not installed' }, async () => {
  await exchange({ cliFirst: true });
});

test('the CLI offers to aiortc: chat both ways', { timeout: 90000, skip: !haveAiortc && 'aiortc not installed' }, async () => {
  await exchange({ cliFirst: false });
});

test('the CLI relay-only (TURN) and aiortc with the server\'s ICE servers: chat both ways', { timeout: 90000, skip: !haveAiortc && 'aiortc not installed' }, async () => {
  await exchange({ cliFirst: true, relay: true });
});
