// Direct (P2P) media across real NATs (nftables masquerade in network namespaces):
//   (1) both clients behind endpoint-independent (port-preserving) NATs: hole punching with server-reflexive
//       candidates gives a direct pair; the TURN server relays (almost) nothing;
//   (5) once connected, SIGKILL the server: media keeps flowing 10 s across the NATs;
//   (6) one NAT's public address changes mid-call: the SDK's ICE restart restores media.
// Run: sudo node --test --test-concurrency=1 tests/netlab/   (see docs/nat-traversal.md)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { peerStats, mediaGrowth, sleep, until, describePair } from './lib/lab.mjs';
import { withLab, joinPair, skipReason } from './lib/scenario.mjs';

const EIM = { a: { nat: 'eim' }, b: { nat: 'eim' } };

test('(1) both behind endpoint-independent NATs: direct srflx/prflx pair, TURN relays ~0 bytes of media', { skip: skipReason || false, timeout: 90000 }, async (t) => {
  await withLab(t, 'eim-eim', EIM, async ({ lab }) => {
    const start = lab.turnRelayedBytes();
    const { alice, bob, sa, sb } = await joinPair(lab, 'eim-room', { path: 'direct' });
    assert.equal(sa.path, 'direct', `Alice's pair is direct: ${describePair(sa)}`);
    assert.equal(sb.path, 'direct', `Bob's pair is direct: ${describePair(sb)}`);
    const before = lab.turnRelayedBytes();
    // Behind NAT, at least one end of a working direct pair is the NAT's public (reflexive) address.
    assert.ok(['srflx', 'prflx'].includes(sa.local) || ['srflx', 'prflx'].includes(sa.remote), `a reflexive candidate in ${describePair(sa)}`);
    // (Chromium hides the address of a peer-reflexive remote candidate.)
    assert.ok(sa.remote === 'prflx' || /^203\.0\.113\.20:/.test(sa.remoteAddr), `Alice talks to B's NAT public address: ${describePair(sa)}`);
    assert.ok(sb.remote === 'prflx' || /^203\.0\.113\.10:/.test(sb.remoteAddr), `Bob talks to A's NAT public address: ${describePair(sb)}`);
    const g = await mediaGrowth(bob, alice, 3000);
    assert.ok(g.frames > 0 && g.samples > 0, `media flows directly: ${JSON.stringify(g)}`);
    const relayed = lab.turnRelayedBytes() - before;
    lab.note(`TURN relayed ${relayed} bytes during 3 s of direct media, ${before - start} bytes while ICE was connecting (turn_relayed_bytes_total)`);
    // Both clients allocate a relay candidate and ICE checks it (and may use a relay pair for a moment before the
    // direct one is nominated), but once the pair is direct no media goes through TURN.
    assert.ok(relayed < 5000, `TURN relayed no media once direct (${relayed} bytes in 3 s)`);
  });
});

test('(5) after connecting, the server is SIGKILLed: media continues 10 s across the NATs', { skip: skipReason || false, timeout: 90000 }, async (t) => {
  await withLab(t, 'server-kill', EIM, async ({ lab }) => {
    const { alice, bob, sa, sb } = await joinPair(lab, 'kill-room', { path: 'direct' });
    assert.equal(sa.path, 'direct', describePair(sa));
    assert.equal(sb.path, 'direct', describePair(sb));
    const relayed = lab.turnRelayedBytes();
    lab.note(`TURN relayed ${relayed} bytes before the kill (turn_relayed_bytes_total)`);
    await lab.killServer();
    // 5 samples of 2 s = 10 s, media from each side to the other must grow in every one.
    for (let i = 1; i <= 5; i++) {
      const [ga, gb] = await Promise.all([mediaGrowth(alice, bob, 2000), mediaGrowth(bob, alice, 2000)]);
      lab.note(`+${2 * i}s after kill: Alice got ${ga.frames} frames/${ga.samples} samples, Bob got ${gb.frames} frames/${gb.samples} samples; ${ga.after?.connectionState}/${gb.after?.connectionState}`);
      assert.ok(ga.frames > 0 && ga.samples > 0, `Alice still receives at +${2 * i}s: ${JSON.stringify(ga)}`);
      assert.ok(gb.frames > 0 && gb.samples > 0, `Bob still receives at +${2 * i}s: ${JSON.stringify(gb)}`);
    }
    assert.equal(lab.httpGet('/healthz'), null, 'the server is really gone');
    const sig = await alice.page.evaluate(() => window.switchboardApp.room.signalingState);
    lab.note(`Alice's signaling state after the kill: ${sig}`);
  });
});

// How long after the first ICE restart (either side) media must flow again.
const RESTORE_MS = Number(process.env.NETLAB_RESTORE_MS || 5000);

test('(6) a NAT\'s public address changes mid-call: ICE restart restores media within 5 s', { skip: skipReason || false, timeout: 90000 }, async (t) => {
  await withLab(t, 'readdress', EIM, async ({ lab }) => {
    const { alice, bob, sa } = await joinPair(lab, 'move-room', { path: 'direct' });
    lab.note(`before: Alice ${describePair(sa)}`);
    const t0 = Date.now();
    lab.readdress('a', '203.0.113.11');
    lab.note('router A: public address 203.0.113.10 -> 203.0.113.11 (its NAT mappings, the WebSocket\'s too, are gone)');
    const rel = (ms) => (ms == null ? 'never' : `+${ms - t0}ms`);
    const events = async (p) => (await p.page.evaluate(() => window.switchboardApp.events))
      .filter((e) => e.t >= t0)
      .map((e) => `${rel(e.t)} ${e.type}${e.state ? `=${e.state}` : ''}${e.reason ? `(${e.reason})` : ''}`);
    const restarts = async () => (await Promise.all([alice, bob].map((p) => p.page.evaluate(() => window.__netlabIceRestarts || []))))
      .flat().filter((x) => x >= t0);
    const diagnose = async () => `\nAlice events: ${(await events(alice)).join(', ')}\nBob events: ${(await events(bob)).join(', ')}`
      + (process.env.NETLAB_TRACE === '1'
        ? `\nAlice trace:\n${alice.console.filter((l) => l.includes('[trace')).join('\n')}\nBob trace:\n${bob.console.filter((l) => l.includes('[trace')).join('\n')}`
        : '\n(NETLAB_TRACE=1 logs every signaling message and peer-connection state with timestamps)');
    // Timeline: media stops (frames from Alice stop growing at Bob), the SDK restarts ICE, media comes back
    // from Alice's new public address.
    let stoppedAt = null;
    let restoredAt = null;
    let lastFrames = (await peerStats(bob.page))[alice.id]?.framesDecoded ?? 0;
    let lastGrowth = Date.now();
    let sb;
    await until(async () => {
      sb = (await peerStats(bob.page))[alice.id];
      const frames = sb?.framesDecoded ?? 0;
      const now = Date.now();
      if (frames > lastFrames) {
        if (stoppedAt && !restoredAt && sb.connectionState === 'connected' && (sb.remote === 'prflx' || /^203\.0\.113\.11:/.test(sb.remoteAddr || ''))) restoredAt = now;
        lastGrowth = now;
      } else if (!stoppedAt && now - lastGrowth > 1000) {
        stoppedAt = lastGrowth;
      }
      lastFrames = frames;
      return restoredAt;
    }, { timeout: 40000, interval: 250, what: 'media from Alice via her new public address' }).catch(async (err) => {
      throw new Error(`${err.message}\nBob's view: ${describePair(sb)} ${JSON.stringify(sb)}${await diagnose()}`);
    });
    const r = await restarts();
    const firstRestart = r.length ? Math.min(...r) : null;
    const detail = `media stopped ${rel(stoppedAt)}, first ICE restart ${rel(firstRestart)} (${r.length} restart offers), media restored ${rel(restoredAt)} via ${describePair(sb)}`;
    lab.note(detail);
    lab.note(`Alice events: ${(await events(alice)).join(', ')}`);
    lab.note(`Bob events: ${(await events(bob)).join(', ')}`);
    const g = await mediaGrowth(alice, bob, 2000);
    assert.ok(g.frames > 0 && g.samples > 0, `media flows again both ways: ${JSON.stringify(g)}`);
    const sa2 = (await peerStats(alice.page))[bob.id];
    lab.note(`after: Alice ${describePair(sa2)}; TURN relayed ${lab.turnRelayedBytes()} bytes in total`);
    assert.equal(sa2.path, 'direct', `direct again after the restart: ${describePair(sa2)}`);
    assert.ok(firstRestart, `the SDK restarted ICE: ${detail}`);
    assert.ok(restoredAt - firstRestart <= RESTORE_MS,
      `media restored ${restoredAt - firstRestart} ms after the first ICE restart (limit ${RESTORE_MS} ms): ${detail}${await diagnose()}`);
  });
});
