// `auto` rooms (docs/protocol.md, "SFU rooms"): a room starts as a mesh and moves to the SFU when a join takes it
// past `rooms.auto-threshold` (default 4). Three participants in a mesh, a fourth joins (still a mesh), a fifth
// joins: the first four get `room_mode` `sfu`, close their mesh connections and connect to the SFU without
// leaving (no `participant_left` anywhere); media from everyone resumes through the SFU (goal: within 2 s) — the
// time until the SFU delivers everyone and the longest decoding gap per viewer across the switch are printed and
// bounded; afterwards no mesh connection is left and everyone decodes everyone.
// Five pages in one browser, 160x120 cameras, driven through the SDK.
//
// Run: cargo build -p switchboard && node --test --test-concurrency=1 tests/sfu/auto.test.mjs
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import { Harness, waitForMediaFrom, mediaGrowth } from '../e2e/lib/harness.mjs';
import { joinSdk, mediaFromAll } from './lib.mjs';

const h = new Harness();
after(() => h.close());

process.env.SWITCHBOARD_SFU_ENABLED = 'true';

/**
 * Samples, every 100 ms, the video frames a page decoded from each participant over any of its connections (mesh
 * peers, the SFU link; a closed connection's last count is kept), until the returned `stop()`.
 */
async function sampleFrames(page) {
  await page.evaluate(() => {
    const f = { last: {}, samples: [] };
    window.__frames = f;
    window.__frameSampler = setInterval(async () => {
      const room = window.switchboardApp.room;
      for (const [id, peer] of room.peers) {
        const st = await peer.stats().catch(() => null);
        if (st) f.last[`${id}|mesh`] = st.video.framesDecoded;
      }
      if (room.sfu) {
        const all = await room.sfu.statsByParticipant().catch(() => ({}));
        for (const [id, st] of Object.entries(all)) f.last[`${id}|sfu`] = st.video.framesDecoded;
      }
      const tot = {};
      for (const [k, v] of Object.entries(f.last)) tot[k.split('|')[0]] = (tot[k.split('|')[0]] || 0) + v;
      f.samples.push({ t: Date.now(), tot });
    }, 100);
  });
  return async () => page.evaluate(() => {
    clearInterval(window.__frameSampler);
    return window.__frames.samples;
  });
}

/** The longest time (ms) after `from` during which the frames decoded from `id` did not grow. */
function longestGap(samples, id, from) {
  let worst = 0;
  let lastGrowth = null;
  let prev = null;
  for (const s of samples) {
    const n = s.tot[id] ?? 0;
    if (prev !== null && n > prev) {
      if (lastGrowth !== null) worst = Math.max(worst, s.t - Math.max(lastGrowth, from));
      lastGrowth = s.t;
    }
    prev = n;
  }
  if (lastGrowth !== null && samples.length) worst = Math.max(worst, samples.at(-1).t - Math.max(lastGrowth, from));
  return worst;
}

test('auto room: mesh up to four, the fifth moves everyone to the SFU without anyone leaving; media resumes within 5 s', { timeout: 240000 }, async () => {
  process.env.SWITCHBOARD_ROOMS_DEFAULT_MODE = 'auto';
  const server = await h.startServer();
  const browser = await h.launchBrowser();
  const room = 'auto-room';
  const ps = [];
  for (const name of ['Alice', 'Bob', 'Carol']) ps.push(await joinSdk(browser, server, room, name));
  const state = (p) => p.page.evaluate(() => {
    const room = window.switchboardApp.room;
    return { mode: room.roomInfo?.mode, peers: room.peers.size, sfu: !!room.sfu };
  });
  for (const p of ps) {
    const others = ps.filter((o) => o !== p).map((o) => o.id);
    await waitForMediaFrom(p.page, others, { timeout: 40000, what: `${p.name} receiving the mesh` });
    assert.deepEqual(await state(p), { mode: 'mesh', peers: 2, sfu: false }, `${p.name} is in a 3-person mesh`);
  }
  ps.push(await joinSdk(browser, server, room, 'Dave'));
  for (const p of ps) {
    const others = ps.filter((o) => o !== p).map((o) => o.id);
    await waitForMediaFrom(p.page, others, { timeout: 40000, what: `${p.name} receiving the 4-person mesh` });
    assert.deepEqual(await state(p), { mode: 'mesh', peers: 3, sfu: false }, `${p.name}: four people are still a mesh (threshold 4)`);
  }

  // The fifth: everyone moves to the SFU.
  const stops = await Promise.all(ps.map((p) => sampleFrames(p.page)));
  const eve = await joinSdk(browser, server, room, 'Eve');
  ps.push(eve);
  const ids = ps.map((p) => p.id);
  const resumed = [];
  await Promise.all(ps.map(async (p) => {
    const others = ids.filter((id) => id !== p.id);
    let t;
    try {
      t = await mediaFromAll(p.page, others, 40000);
    } catch (err) {
      if (process.env.SFU_TEST_LOG) fs.writeFileSync(process.env.SFU_TEST_LOG, server.log.join('\n'));
      throw new Error(`${p.name}: ${err.message}\nbrowser console:\n${p.console.slice(-20).join('\n')}\nserver log:\n${server.log.slice(-30).join('\n')}`);
    }
    if (p === eve) return;
    const ev = await p.page.evaluate(() => window.switchboardApp.events);
    const sw = ev.find((e) => e.type === 'room_mode');
    assert.ok(sw && sw.id === 'sfu', `${p.name} got room_mode sfu`);
    resumed.push({ name: p.name, ms: t - sw.t });
  }));
  console.log(`# SFU media from all four others after room_mode: ${resumed.map((r) => `${r.name} ${r.ms} ms`).join(', ')}`);
  if (process.env.SFU_TEST_LOG) fs.writeFileSync(process.env.SFU_TEST_LOG, server.log.join('\n'));
  // The goal is 2 s (printed; on an idle 2-core machine it is met). Five Chromium pages renegotiating at once are
  // CPU-bound, so on a shared CI machine the test bounds it at 5 s, and at 8 s when the machine is visibly
  // overloaded (load average above twice the core count, e.g. parallel cargo builds).
  const load = os.loadavg()[0];
  const cores = os.cpus().length;
  const bound = load > 2 * cores ? 8000 : 5000;
  if (bound !== 5000) console.log(`# machine loaded (load average ${load.toFixed(1)} on ${cores} cores): media-resume bound relaxed to ${bound} ms`);
  for (const r of resumed) assert.ok(r.ms <= bound, `${r.name}: media from everyone resumed ${r.ms} ms after room_mode (> ${bound} ms)`);
  // The longest time a viewer decoded nothing from someone, from room_mode until 3 s after the SFU delivered
  // everyone (the mesh is closed at room_mode, so this is the switch as a user sees it), same bound.
  await new Promise((r) => setTimeout(r, 3000));
  const first4 = ps.slice(0, 4);
  for (const [i, p] of first4.entries()) {
    const samples = await stops[i]();
    const sw = (await p.page.evaluate(() => window.switchboardApp.events)).find((e) => e.type === 'room_mode');
    const gaps = first4.filter((o) => o !== p).map((o) => [o.name, longestGap(samples.filter((x) => x.t >= sw.t - 500), o.id, sw.t)]);
    console.log(`# ${p.name}: longest decoding gap per participant across the switch: ${gaps.map(([n, g]) => `${n} ${g} ms`).join(', ')}`);
    for (const [n, g] of gaps) assert.ok(g <= bound, `${p.name}: video from ${n} stopped decoding for ${g} ms across the switch (> ${bound} ms)`);
  }

  for (const p of ps) {
    assert.deepEqual(await state(p), { mode: 'sfu', peers: 0, sfu: true }, `${p.name} is on the SFU with no mesh peer connection`);
    const ev = await p.page.evaluate(() => window.switchboardApp.events);
    assert.deepEqual(ev.filter((e) => e.type === 'participant_left'), [], `${p.name} saw nobody leave`);
    const roster = await p.page.evaluate(() => [...window.switchboardApp.room.participants.keys()].sort());
    assert.deepEqual(roster, ids.filter((id) => id !== p.id).sort(), `${p.name}'s roster is the other four`);
  }
  for (const p of ps) {
    const others = ids.filter((id) => id !== p.id);
    const { growing } = await mediaGrowth(p.page, others, 4000);
    for (const id of others) {
      assert.ok(growing[id].frames > 5, `${p.name}: frames from ${id} grew by only ${growing[id].frames} in 4 s`);
      assert.ok(growing[id].samples > 48000, `${p.name}: audio samples from ${id} grew by only ${growing[id].samples} in 4 s`);
    }
  }
});
