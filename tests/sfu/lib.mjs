// Helpers shared by the SFU tests.

/** Sums a Prometheus counter over the series whose labels include `labels` (e.g. {kind: 'video'}). */
export function metric(text, name, labels = {}) {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = line.match(/^([a-z_]+)(\{([^}]*)\})?\s+([0-9.eE+-]+)/);
    if (!m || m[1] !== name) continue;
    const ls = Object.fromEntries((m[3] || '').split(',').filter(Boolean).map((kv) => {
      const i = kv.indexOf('=');
      return [kv.slice(0, i), kv.slice(i + 1).replace(/^"|"$/g, '')];
    }));
    if (Object.entries(labels).every(([k, v]) => ls[k] === v)) sum += Number(m[4]);
  }
  return sum;
}

/**
 * A participant driven through the SDK alone (no demo app: lighter, and the camera size is ours to pick), exposed as
 * `window.switchboardApp.room` like the app does, so the harness's media helpers work. `events` records
 * participant_joined/left, room_mode and active_speaker with their time. `initScript` (a function or
 * `{content}`, as Playwright's addInitScript takes) runs in the page before anything else.
 */
export async function joinSdk(browser, server, room, name, { width = 160, height = 120, frameRate = 15, timeout = 30000, initScript = null, roomOptions = {} } = {}) {
  const context = await browser.newContext({ permissions: ['camera', 'microphone'] });
  // Runs in the page before the SDK does (e.g. to hook RTCPeerConnection).
  if (initScript) await context.addInitScript(initScript);
  const page = await context.newPage();
  const consoleLines = [];
  page.on('console', (m) => {
    consoleLines.push(`[${m.type()}] ${m.text()}`);
    if (consoleLines.length > 500) consoleLines.splice(0, 250);
  });
  page.on('pageerror', (e) => consoleLines.push(`[pageerror] ${e.message}`));
  await page.goto(`${server.url}/healthz`, { timeout });
  const id = await page.evaluate(async ({ room, name, width, height, frameRate, roomOptions }) => {
    const sb = await import('/sdk/switchboard.js');
    const { token } = await sb.devToken(room, name);
    const r = new sb.Room('/ws', token, roomOptions);
    const events = [];
    window.switchboardApp = { room: r, events };
    const ev = (type) => r.on(type, (a, b) => events.push({ type, id: a && typeof a === 'object' ? a.id : a, reason: typeof b === 'string' ? b : undefined, t: Date.now() }));
    for (const type of ['participant_joined', 'participant_left', 'room_mode', 'active_speaker']) ev(type);
    // Chromium counts received audio samples only while something plays the track: one small element per stream.
    r.on('track', (p, track, stream) => {
      const key = `${p.id}/${stream.id}`;
      let el = document.querySelector(`video[data-key="${CSS.escape(key)}"]`);
      if (!el) {
        el = document.createElement('video');
        el.dataset.key = key;
        el.autoplay = true;
        el.playsInline = true;
        el.width = 80;
        document.body.append(el);
      }
      if (el.srcObject !== stream) el.srcObject = stream;
      el.play().catch(() => {});
    });
    await r.publish({ camera: { width, height, frameRate }, microphone: true });
    await r.connect();
    return r.localParticipant.id;
  }, { room, name, width, height, frameRate, roomOptions });
  return { context, page, name, id, console: consoleLines };
}

/** In the page: waits until video frames and audio samples from every id in `ids` are counted; returns Date.now(). */
export async function mediaFromAll(page, ids, timeout = 30000) {
  return page.evaluate(async ({ ids, timeout }) => {
    const deadline = Date.now() + timeout;
    for (;;) {
      const stats = await window.switchboardApp.room.getStats();
      if (ids.every((id) => stats[id] && stats[id].video.framesDecoded > 0 && stats[id].audio.totalSamplesReceived > 0)) return Date.now();
      if (Date.now() > deadline) throw new Error(`no media from all of ${ids.join(', ')}: ${JSON.stringify(Object.fromEntries(Object.entries(stats).map(([k, v]) => [k, [v.video.framesDecoded, v.audio.totalSamplesReceived]])))}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }, { ids, timeout });
}

/** Starts a server with extra environment (e.g. `{SWITCHBOARD_SFU_MEDIA_TIMEOUT_SECS: '3'}`) for this server only. */
export async function startServerWith(h, env) {
  const saved = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
  Object.assign(process.env, env);
  try {
    return await h.startServer();
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}
