// NAT traversal through Switchboard's TURN server, with real NATs (nftables masquerade in network namespaces):
//   (2) one client behind a symmetric NAT: connects via a relay candidate, and TURN relays the media;
//   (3) UDP blocked at one NAT: connects via TURN over TCP;
//   (4) control: without TURN, symmetric + symmetric never connects (the relay is what makes (2)/(3) work);
//   (11) both behind symmetric NATs: relayed through our TURN;
//   (12) a corporate firewall at A (no UDP, TCP only to 443/8080): connects via TURN over TLS on 443.
// Run: sudo node --test --test-concurrency=1 tests/netlab/   (see docs/nat-traversal.md)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { peerStats, mediaGrowth, sleep, describePair } from './lib/lab.mjs';
import { withLab, joinPair, skipReason } from './lib/scenario.mjs';

/**
 * Alice (A) and Bob (B) join `room`; both selected pairs must go through a relay (Alice's own relay candidate
 * reached over `aliceVia` — 'tcp' or 'tls' — when given), media must flow both ways for 3 s, and the TURN server
 * must have relayed more than 100 kB of it (`turn_relayed_bytes_total`).
 */
async function relayedCall(lab, room, { aliceVia = null, timeout = 30000 } = {}) {
  const before = lab.turnRelayedBytes();
  const { alice, bob, sa, sb } = await joinPair(lab, room, { timeout, path: 'relay' });
  if (aliceVia) {
    assert.equal(sa.local, 'relay', `Alice uses a relay candidate: ${describePair(sa)}`);
    assert.equal(sa.relayProtocol, aliceVia, `Alice reaches TURN over ${aliceVia}: ${describePair(sa)}`);
  }
  assert.equal(sa.path, 'relay', `Alice's pair goes through the relay: ${describePair(sa)}`);
  assert.equal(sb.path, 'relay', `Bob's pair goes through the relay: ${describePair(sb)}`);
  const [toBob, toAlice] = await Promise.all([mediaGrowth(bob, alice, 3000), mediaGrowth(alice, bob, 3000)]);
  for (const g of [toBob, toAlice]) assert.ok(g.frames > 0 && g.samples > 0, `media flows through the relay both ways: ${JSON.stringify({ toBob, toAlice })}`);
  const relayed = lab.turnRelayedBytes() - before;
  lab.note(`TURN relayed ${relayed} bytes (turn_relayed_bytes_total)`);
  assert.ok(relayed > 100000, `TURN relayed the media (${relayed} bytes)`);
  return { alice, bob };
}

test('(2) one side behind a symmetric NAT: connects via TURN relay, TURN relays the media', { skip: skipReason || false, timeout: 90000 }, async (t) => {
  await withLab(t, 'symmetric', { a: { nat: 'symmetric' }, b: { nat: 'eim' } }, async ({ lab }) => {
    await relayedCall(lab, 'sym-room');
  });
});

test('(3) UDP blocked at one NAT: connects via TURN over TCP', { skip: skipReason || false, timeout: 90000 }, async (t) => {
  await withLab(t, 'udp-blocked', { a: { nat: 'eim', udpBlock: true }, b: { nat: 'eim' } }, async ({ lab }) => {
    await relayedCall(lab, 'tcp-room', { aliceVia: 'tcp', timeout: 40000 });
  });
});

test('(4) control: without TURN (--no-turn), symmetric + symmetric NATs do not connect', { skip: skipReason || false, timeout: 60000 }, async (t) => {
  await withLab(t, 'no-turn', { a: { nat: 'symmetric' }, b: { nat: 'symmetric' }, turn: false }, async ({ lab }) => {
    const alice = await lab.join('a', 'noturn-room', 'Alice');
    const bob = await lab.join('b', 'noturn-room', 'Bob');
    const iceServers = await alice.page.evaluate(() => window.switchboardApp.room.iceServers);
    assert.deepEqual(iceServers, [], 'no STUN/TURN server is offered');
    // Both see each other (signaling works), and the peer connection was attempted...
    await alice.page.waitForFunction((id) => window.switchboardApp.room.peers.has(id), bob.id, { timeout: 10000 });
    // ...but never gets connected within the window.
    const windowMs = 15000;
    const deadline = Date.now() + windowMs;
    const seen = new Set();
    let last;
    while (Date.now() < deadline) {
      const a = (await peerStats(alice.page))[bob.id];
      const b = (await peerStats(bob.page))[alice.id];
      last = { a, b };
      seen.add(a?.connectionState).add(b?.connectionState);
      assert.ok(a?.connectionState !== 'connected' && b?.connectionState !== 'connected', `connected without a relay?! ${JSON.stringify(last)}`);
      await sleep(500);
    }
    lab.note(`no connection within ${windowMs} ms; connection states seen: ${[...seen].join(', ')}; pairs: A ${describePair(last.a)}, B ${describePair(last.b)}`);
    assert.equal(last.a?.path ?? null, null);
    assert.equal(last.b?.path ?? null, null);
    lab.note(`TURN relayed bytes: n/a (TURN disabled)`);
  });
});

test('(11) both sides behind symmetric NATs: the call goes through a TURN relay, which relays the media', { skip: skipReason || false, timeout: 90000 }, async (t) => {
  await withLab(t, 'sym-sym', { a: { nat: 'symmetric' }, b: { nat: 'symmetric' } }, async ({ lab }) => {
    await relayedCall(lab, 'symsym-room');
  });
});

test('(12) corporate firewall at A (no UDP, TCP only to 443/8080): connects via TURN over TLS on 443', { skip: skipReason || false, timeout: 90000 }, async (t) => {
  let cert;
  await withLab(
    t,
    'web-only',
    {
      a: { nat: 'eim', webOnly: true },
      b: { nat: 'eim' },
      env: (lab) => {
        cert = lab.selfSignedCertificate();
        return { SWITCHBOARD_TURN_CERT: cert.cert, SWITCHBOARD_TURN_PKEY: cert.key, SWITCHBOARD_TURN_TLS_LISTENING_PORT: '443' };
      },
    },
    async ({ lab }) => {
      lab.note(`server TURN listeners: ${Object.entries(lab.server.listening).filter(([k]) => k.startsWith('turn')).map(([k, v]) => `${k} ${v}`).join(', ')}`);
      // Chromium checks the TURN server's certificate: trust our self-signed one by its public key.
      lab.browserArgs.push(`--ignore-certificate-errors-spki-list=${cert.spki}`);
      const { alice } = await relayedCall(lab, 'tls-room', { aliceVia: 'tls', timeout: 40000 });
      const iceServers = await alice.page.evaluate(() => window.switchboardApp.room.iceServers.flatMap((s) => [].concat(s.urls)));
      lab.note(`ICE servers offered: ${iceServers.join(' ')}`);
      assert.ok(iceServers.some((u) => u.startsWith('turns:203.0.113.1:443')), `the server offers turns: on 443 (${iceServers})`);
    },
  );
});
