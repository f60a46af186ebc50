// Shared scaffolding of the netlab tests: one fresh lab (topology + server + two browsers) per test, always torn
// down, and a report line per test (selected candidate pairs, bytes the TURN server relayed).
import { after } from 'node:test';
import { Lab, missingPrerequisite, waitConnected, describePair } from './lab.mjs';

const open = new Set();
after(async () => {
  for (const lab of open) await lab.close();
});

export const skipReason = missingPrerequisite();

/**
 * Runs `fn(ctx)` with a fresh lab; `ctx` = {lab, t}. Options: a, b (NAT of each side), turn (server runs TURN),
 * env (extra environment of the server, or a function of the lab returning it — e.g. to make a certificate).
 * The lab is closed when `fn` ends (or fails), and by the file's after() hook at the latest.
 */
export async function withLab(t, name, { a = {}, b = {}, turn = true, env = {} } = {}, fn) {
  const lab = new Lab(name);
  open.add(lab);
  try {
    await lab.start({ a, b });
    await lab.startServer({ turn, env: typeof env === 'function' ? env(lab) : env });
    await fn({ lab, t });
  } finally {
    await lab.close();
    open.delete(lab);
  }
}

/** Joins Alice in client namespace a and Bob in b (same room); waits for media both ways; returns both. */
/** `path` ('direct' | 'relay'): wait until both selected pairs are of that kind (else: any connected pair). */
export async function joinPair(lab, room, { relayA = false, relayB = false, timeout = 30000, path = null } = {}) {
  const alice = await lab.join('a', room, 'Alice', { relay: relayA });
  const bob = await lab.join('b', room, 'Bob', { relay: relayB });
  const [sa, sb] = await Promise.all([waitConnected(alice, bob, timeout, path), waitConnected(bob, alice, timeout, path)]);
  lab.note(`Alice (A) selected pair: ${describePair(sa)}`);
  lab.note(`Bob   (B) selected pair: ${describePair(sb)}`);
  return { alice, bob, sa, sb };
}
