// Mesh calls of two and three participants: everyone decodes everyone else's video and plays their audio, and
// both keep increasing over time (Chromium's fake camera and microphone).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { Harness, waitForMediaFrom, mediaGrowth, screenshot } from './lib/harness.mjs';

const h = new Harness();
after(() => h.close());

async function checkRoom(n, room) {
  const server = await h.startServer();
  const browser = await h.launchBrowser();
  const names = ['Alice', 'Bob', 'Carol'].slice(0, n);
  const ps = [];
  for (const name of names) ps.push(await h.join(browser, server, room, name));
  const ids = ps.map((p) => p.id);
  for (const p of ps) {
    const others = ids.filter((id) => id !== p.id);
    await waitForMediaFrom(p.page, others, { timeout: 30000, what: `${p.name} receiving audio+video from ${others.length} peers` });
  }
  for (const p of ps) {
    const others = ids.filter((id) => id !== p.id);
    const { growing } = await mediaGrowth(p.page, others, 3000);
    for (const id of others) {
      assert.ok(growing[id].frames > 10, `${p.name}: frames decoded from ${id} grew by only ${growing[id].frames} in 3 s`);
      assert.ok(growing[id].samples > 48000, `${p.name}: audio samples from ${id} grew by only ${growing[id].samples} in 3 s`);
    }
  }
  return { server, browser, ps };
}

test('two participants in one room each receive the other\'s audio and video, and it keeps flowing', { timeout: 90000 }, async () => {
  const { ps } = await checkRoom(2, 'media-two');
  // The grid shows both videos: take the screenshots the README points to.
  await ps[0].page.waitForTimeout(1000);
  await screenshot(ps[0].page, 'two-participants-alice.png');
  await screenshot(ps[1].page, 'two-participants-bob.png');
  const playing = await ps[0].page.evaluate(() => [...document.querySelectorAll('#grid video')].map((v) => ({ w: v.videoWidth, h: v.videoHeight, paused: v.paused })));
  assert.equal(playing.length, 2, 'two tiles in the grid');
  for (const v of playing) assert.ok(v.w > 0 && v.h > 0 && !v.paused, `a grid video is not playing: ${JSON.stringify(v)}`);
  await h.close();
});

test('three participants in one room each receive every other participant\'s audio and video', { timeout: 120000 }, async () => {
  await checkRoom(3, 'media-three');
  await h.close();
});
