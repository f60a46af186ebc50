// Media between the native CLI (`switchboard join --publish FILE.ivf --record DIR`, str0m, no codecs) and Chromium
// (fake camera and microphone): the CLI records the browser's VP8 video to IVF and Opus audio to Ogg, which ffprobe
// reads as valid with a plausible duration, and the browser decodes the CLI's published IVF video.
//
//   node --test tests/native/media.test.mjs     (needs ffmpeg/ffprobe; binary: SWITCHBOARD_BIN or target/debug)
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Harness, until, mediaCounters } from '../e2e/lib/harness.mjs';
import { startCli, killAll } from './lib.mjs';

const h = new Harness();
after(async () => {
  killAll();
  await h.close();
});

let haveFfmpeg = true;
try {
  execFileSync('ffmpeg', ['-version'], { stdio: 'ignore' });
  execFileSync('ffprobe', ['-version'], { stdio: 'ignore' });
} catch (_) {
  haveFfmpeg = false;
}

function probe(file) {
  const out = execFileSync('ffprobe', ['-v', 'error', '-show_entries', 'format=format_name,duration:stream=codec_name,codec_type,width,height', '-of', 'json', file]);
  return JSON.parse(out.toString());
}

/** Decodes the whole file (errors fail): returns the number of decoded frames reported by ffprobe. */
function countFrames(file) {
  const out = execFileSync('ffprobe', ['-v', 'error', '-count_frames', '-select_streams', '0', '-show_entries', 'stream=nb_read_frames', '-of', 'csv=p=0', file]);
  return Number(out.toString().trim());
}

async function mediaRoundTrip({ cliFirst }) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sb-media-'));
  const ivf = path.join(dir, 'pattern.ivf');
  // A keyframe every second so a receiver can start anywhere in the loop.
  execFileSync('ffmpeg', ['-v', 'error', '-f', 'lavfi', '-i', 'testsrc=size=320x240:rate=15', '-t', '5', '-c:v', 'libvpx', '-g', '15', '-b:v', '300k', '-y', ivf]);
  const recDir = path.join(dir, 'rec');

  const server = await h.startServer({ args: ['--no-turn'] });
  const browser = await h.launchBrowser();
  const room = `media-${crypto.randomBytes(3).toString('hex')}`;
  // The later joiner offers: the CLI with data channels plus an audio and a video m-line (sendrecv), or the
  // browser with its camera and microphone (the CLI answers and sends on the offered m-lines).
  let web = cliFirst ? null : await h.join(browser, server, room, 'Web');
  const cli = startCli([server.url, '--room', room, '--name', 'CLI', '--publish', ivf, '--record', recDir], { RUST_LOG: 'warn' });
  const fail = (what) => `${what}\n${cli.log('cli')}\nbrowser console:\n${web ? web.console.join('\n') : ''}`;
  const joinedLine = await until(() => cli.stderr.find((l) => l.startsWith('joined room')) || cli.exited, { timeout: 20000, what: 'CLI joined' });
  assert.ok(typeof joinedLine === 'string', fail('CLI exited'));
  const cliId = joinedLine.match(/\((p_[^)]+)\)/)?.[1];
  if (cliFirst) web = await h.join(browser, server, room, 'Web');
  await until(() => cli.stderr.some((l) => l === '* connected to Web'), { timeout: 30000, what: 'CLI connected' }).catch((e) => assert.fail(fail(e.message)));

  // The browser decodes the CLI's video, and keeps decoding.
  const first = await until(async () => {
    const c = (await mediaCounters(web.page))[cliId];
    return c && c.framesDecoded > 0 && c;
  }, { timeout: 30000, interval: 500, what: 'browser decoding the CLI video' }).catch((e) => assert.fail(fail(e.message)));
  await new Promise((r) => setTimeout(r, 4000));
  const later = (await mediaCounters(web.page))[cliId];
  assert.ok(later.framesDecoded - first.framesDecoded >= 30, fail(`framesDecoded grew only ${first.framesDecoded} -> ${later.framesDecoded} in 4 s (15 fps published)`));
  const size = await web.page.evaluate(() => [...document.querySelectorAll('#grid video')].map((v) => [v.videoWidth, v.videoHeight]));
  assert.ok(size.some(([w, hh]) => w === 320 && hh === 240), fail(`no 320x240 video in the grid: ${JSON.stringify(size)}`));

  // Let the recording run, then leave (SIGINT): the CLI finalizes its files.
  await new Promise((r) => setTimeout(r, 2000));
  process.kill(cli.proc.pid, 'SIGINT');
  await until(() => cli.exited, { timeout: 10000, what: 'CLI exit' }).catch((e) => assert.fail(fail(e.message)));
  assert.equal(cli.exited.code, 0, fail('CLI exit status'));

  const files = fs.readdirSync(recDir);
  const video = files.find((f) => f.endsWith('-video.ivf'));
  const audio = files.find((f) => f.endsWith('-audio.ogg'));
  assert.ok(video && audio, fail(`recordings: ${JSON.stringify(files)}`));
  const v = probe(path.join(recDir, video));
  assert.equal(v.streams[0].codec_name, 'vp8', JSON.stringify(v));
  assert.ok(v.streams[0].width > 0 && v.streams[0].height > 0, JSON.stringify(v));
  const vd = Number(v.format.duration);
  assert.ok(vd > 3 && vd < 30, `video duration ${vd} s: ${JSON.stringify(v)}`);
  assert.ok(countFrames(path.join(recDir, video)) > 30, 'decodable video frames');
  const a = probe(path.join(recDir, audio));
  assert.equal(a.streams[0].codec_name, 'opus', JSON.stringify(a));
  const ad = Number(a.format.duration);
  assert.ok(ad > 3 && ad < 30, `audio duration ${ad} s: ${JSON.stringify(a)}`);
  // Decode the audio completely: a broken Ogg page (CRC, lacing) would make ffmpeg complain.
  const errs = execFileSync('ffmpeg', ['-v', 'error', '-i', path.join(recDir, audio), '-f', 'null', '-'], { stdio: ['ignore', 'pipe', 'pipe'] }).toString();
  assert.equal(errs.trim(), '', `ffmpeg audio decode errors: ${errs}`);
  fs.rmSync(dir, { recursive: true, force: true });
}

test('CLI offers: it records the browser\'s audio and video; the browser decodes the CLI\'s published IVF', { timeout: 120000, skip: !haveFfmpeg && 'ffmpeg/ffprobe not installed' }, async () => {
  await mediaRoundTrip({ cliFirst: false });
});

test('browser offers: the CLI answers, records the browser and publishes its IVF on the offered m-lines', { timeout: 120000, skip: !haveFfmpeg && 'ffmpeg/ffprobe not installed' }, async () => {
  await mediaRoundTrip({ cliFirst: true });
});
