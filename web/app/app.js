// Switchboard demo app: lobby at "/", call at "/room/<name>?name=<display name>[&relay=1][&simulcast=0][&codec=h264][&publish=0][#token=<jwt>]".
//
// Test hook (documented, stable): `window.switchboardApp` =
//   { room, ready: Promise<Room>, roomName, displayName, relay,
//     chat: [{from, fromId, text, ts, mine}], files: [{id, name, size, sha256, checksumOk, from}],
//     events: [{type, id, reason?, state?, t}]   // participant_joined/left, signaling_state, connection_state, error
//     sendChat(text), sendFile(file) -> Promise, stats() -> Promise<Record<id, PeerStats>>, lastStats }
import { Room, devToken } from '/sdk/switchboard.js';

const $ = (sel) => document.querySelector(sel);
const params = new URLSearchParams(location.search);
const pathMatch = location.pathname.match(/^\/room\/([^/]+)\/?$/);
const roomName = pathMatch ? decodeURIComponent(pathMatch[1]) : '';
const displayName = (params.get('name') || '').trim();
const relay = params.get('relay') === '1';

const app = {
  room: null,
  ready: null,
  roomName,
  displayName,
  relay,
  chat: [],
  files: [],
  events: [],
  lastStats: {},
  sendChat,
  sendFile,
  stats: () => (app.room ? app.room.getStats() : Promise.resolve({})),
};
window.switchboardApp = app;

if (!roomName || !displayName) showLobby();
else app.ready = startCall();

// ---------------------------------------------------------------- lobby

function showLobby() {
  $('#lobby').hidden = false;
  $('#join-room').value = roomName || params.get('room') || '';
  $('#join-name').value = displayName || localStorage.getItem('switchboard.name') || '';
  $('#join-relay').checked = relay;
  $('#join-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const room = $('#join-room').value.trim();
    const name = $('#join-name').value.trim();
    if (!room || !name) return;
    localStorage.setItem('switchboard.name', name);
    const q = new URLSearchParams({ name });
    if ($('#join-relay').checked) q.set('relay', '1');
    location.href = `/room/${encodeURIComponent(room)}?${q}`;
  });
  (roomName ? $('#join-name') : $('#join-room')).focus();
}

// ---------------------------------------------------------------- call

function logEvent(ev) {
  app.events.push({ ...ev, t: Date.now() });
  if (app.events.length > 2000) app.events.splice(0, 1000);
}

function showError(text) {
  const el = $('#error-banner');
  el.textContent = text;
  el.hidden = false;
  clearTimeout(showError.timer);
  showError.timer = setTimeout(() => (el.hidden = true), 10000);
}

function setSignalBadge(state) {
  const el = $('#signal-state');
  el.dataset.state = state;
  el.textContent = { connecting: 'connecting…', connected: 'connected', reconnecting: 'reconnecting…', disconnected: 'disconnected' }[state] || state;
}

async function startCall() {
  $('#call').hidden = false;
  document.title = `${roomName} · Switchboard`;
  $('#room-title').textContent = roomName;
  $('#relay-toggle').checked = relay;
  $('#relay-toggle').addEventListener('change', () => {
    // Rejoin with the other ICE transport policy.
    const q = new URLSearchParams(location.search);
    if ($('#relay-toggle').checked) q.set('relay', '1');
    else q.delete('relay');
    app.room?.leave();
    location.search = q.toString();
  });
  $('#copy-link').addEventListener('click', async () => {
    const url = `${location.origin}/room/${encodeURIComponent(roomName)}`;
    try {
      await navigator.clipboard.writeText(url);
      systemMessage(`Link copied: ${url}`);
    } catch (_) {
      systemMessage(`Room link: ${url}`);
    }
  });
  setupTabs();
  setupChat();
  setupFiles();
  setupToolbar();

  // A token from the application (`#token=...` keeps it out of server logs; `?token=` also works), else the
  // dev-mode endpoint of a server running without API keys.
  const given = new URLSearchParams(location.hash.slice(1)).get('token') || params.get('token');
  let token;
  try {
    token = given || (await devToken(roomName, displayName)).token;
  } catch (err) {
    setSignalBadge('disconnected');
    showError(`Could not get an access token: ${err.message}`);
    throw err;
  }
  // `?simulcast=0` publishes a single video layer in SFU rooms (default: simulcast, up to three layers by camera size).
  const simulcast = params.get('simulcast') !== '0';
  // `?codec=h264` (or vp8, vp9, av1) publishes video in that codec when the browser has it.
  const videoCodec = params.get('codec') || undefined;
  const room = new Room('/ws', token, { iceTransportPolicy: relay ? 'relay' : 'all', simulcast, videoCodec });
  app.room = room;
  wireRoom(room);

  // Camera and microphone; the call still works without them (receive only, chat, files). `?publish=0` joins
  // as a viewer without asking for them.
  if (params.get('publish') === '0') {
    addLocalTile(null);
  } else {
    try {
      const { camera } = await room.publish({ camera: true, microphone: true });
      addLocalTile(camera);
    } catch (err) {
      showError(`Camera/microphone unavailable (${err.name || err.message}); joining without them.`);
      addLocalTile(null);
    }
  }

  try {
    await room.connect();
  } catch (err) {
    setSignalBadge('disconnected');
    showError(`Could not join: ${err.message}`);
    throw err;
  }
  updateLocalTile();
  systemMessage(`You joined ${roomName}${relay ? ' (relay only)' : ''}.`);
  setInterval(refreshStats, 2000);
  return room;
}

function wireRoom(room) {
  room.on('signaling_state', (state) => {
    setSignalBadge(state);
    logEvent({ type: 'signaling_state', state });
    if (state === 'reconnecting') systemMessage('Signaling connection lost: reconnecting (calls continue)…');
    if (state === 'connected' && app.events.some((e) => e.type === 'signaling_state' && e.state === 'reconnecting')) systemMessage('Signaling reconnected.');
  });
  room.on('error', (err) => {
    logEvent({ type: 'error', code: err.code, message: err.message });
    showError(`${err.code}: ${err.message}`);
  });
  room.on('participant_joined', (p) => {
    logEvent({ type: 'participant_joined', id: p.id });
    ensureTile(p, 'camera');
    systemMessage(`${p.name} joined.`);
  });
  room.on('participant_left', (p, reason) => {
    logEvent({ type: 'participant_left', id: p.id, reason });
    document.querySelectorAll(`.tile[data-pid="${CSS.escape(p.id)}"]`).forEach((el) => removeTile(el));
    systemMessage(`${p.name} left${reason && reason !== 'left' ? ` (${reason})` : ''}.`);
    relayout();
  });
  room.on('participant_updated', (p) => {
    if (p.isLocal) updateLocalTile();
    else updateTile(p);
  });
  room.on('track', (p, track, stream) => {
    const kind = p.streamKind(stream.id) === 'screen' ? 'screen' : 'camera';
    const tile = ensureTile(p, kind, stream.id);
    const video = tile.querySelector('video');
    if (video.srcObject !== stream) video.srcObject = stream;
    video.play().catch(() => {});
    updateTile(p);
  });
  room.on('track_removed', (p, track, stream) => {
    if (stream.getTracks().length === 0) {
      const el = document.querySelector(`.tile[data-pid="${CSS.escape(p.id)}"][data-stream="${CSS.escape(stream.id)}"]`);
      if (el && el.dataset.kind === 'screen') removeTile(el);
      relayout();
    }
  });
  room.on('connection_state', (p, state) => {
    logEvent({ type: 'connection_state', id: p.id, state });
    document.querySelectorAll(`.tile[data-pid="${CSS.escape(p.id)}"] .state`).forEach((el) => {
      el.textContent = state === 'connected' ? '' : state;
      el.hidden = state === 'connected';
    });
  });
  room.on('data', (p, message, channel) => {
    if (typeof message !== 'string') return;
    let msg;
    try {
      msg = JSON.parse(message);
    } catch (_) {
      return;
    }
    if (msg && msg.type === 'chat' && typeof msg.text === 'string') {
      addChat({ from: p.name, fromId: p.id, text: msg.text, ts: msg.ts || Date.now(), mine: false });
    }
  });
  room.on('file_progress', (pr) => fileProgress(pr));
  room.on('file', (p, f) => fileArrived(p, f));
}

// ---------------------------------------------------------------- tiles

function initials(name) {
  return (name || '?').split(/\s+/).map((w) => w[0]).join('').slice(0, 2).toUpperCase();
}

function makeTile(pid, kind, name, local) {
  const tile = document.createElement('div');
  tile.className = `tile ${kind}${local ? ' local' : ''}`;
  tile.dataset.pid = pid;
  tile.dataset.kind = kind;
  tile.innerHTML = '<div class="avatar"></div><video autoplay playsinline></video><div class="label"><span class="name"></span><span class="mic mute-icon" title="Microphone muted" hidden>mic off</span><span class="cam mute-icon" title="Camera off" hidden>cam off</span></div><div class="state" hidden></div>';
  tile.querySelector('.avatar').textContent = initials(name);
  tile.querySelector('.name').textContent = kind === 'screen' ? `${name} (screen)` : name;
  const video = tile.querySelector('video');
  video.muted = !!local;
  $('#grid').append(tile);
  // SFU rooms: the SFU forwards this participant's video only while a tile of it is visible, at the size shown.
  if (!local && app.room) tile.unobserve = app.room.observeTile(pid, tile);
  relayout();
  return tile;
}

function removeTile(tile) {
  tile.unobserve?.();
  tile.remove();
}

function ensureTile(p, kind, streamId) {
  let tile = streamId ? document.querySelector(`.tile[data-pid="${CSS.escape(p.id)}"][data-stream="${CSS.escape(streamId)}"]`) : null;
  if (!tile && kind === 'camera') tile = document.querySelector(`.tile[data-pid="${CSS.escape(p.id)}"][data-kind="camera"]`);
  if (!tile) tile = makeTile(p.id, kind, p.name, false);
  if (streamId) tile.dataset.stream = streamId;
  return tile;
}

function updateTile(p) {
  document.querySelectorAll(`.tile[data-pid="${CSS.escape(p.id)}"]`).forEach((tile) => {
    const screen = tile.dataset.kind === 'screen';
    tile.querySelector('.name').textContent = screen ? `${p.name} (screen)` : p.name;
    tile.querySelector('.avatar').textContent = initials(p.name);
    if (!screen) {
      tile.querySelector('.mic').hidden = !p.audioMuted;
      tile.querySelector('.cam').hidden = !p.videoMuted;
      const hasVideo = !!tile.querySelector('video').srcObject;
      tile.classList.toggle('video-off', p.videoMuted || !hasVideo);
    }
  });
}

function addLocalTile(stream) {
  const tile = makeTile('local', 'camera', `${displayName} (you)`, true);
  if (stream) tile.querySelector('video').srcObject = stream;
  tile.classList.toggle('video-off', !stream || stream.getVideoTracks().length === 0);
}

function updateLocalTile() {
  const room = app.room;
  const tile = document.querySelector('.tile.local');
  if (!room || !tile) return;
  const md = room.localParticipant ? room.localParticipant.metadata : {};
  tile.querySelector('.mic').hidden = !md.muted_audio;
  tile.querySelector('.cam').hidden = !md.muted_video;
  const cam = room.localStreams.camera;
  tile.classList.toggle('video-off', !!md.muted_video || !cam || cam.getVideoTracks().length === 0);
}

function relayout() {
  const n = document.querySelectorAll('#grid .tile').length;
  const grid = $('#grid');
  const cols = n <= 1 ? 1 : n <= 4 ? 2 : 3;
  grid.style.gridTemplateColumns = `repeat(${cols}, minmax(0, 1fr))`;
}

// ---------------------------------------------------------------- toolbar

function setupToolbar() {
  const mic = $('#btn-mic');
  const cam = $('#btn-cam');
  const screen = $('#btn-screen');
  mic.addEventListener('click', () => {
    const muted = mic.getAttribute('aria-pressed') !== 'true';
    app.room?.mute('audio', muted);
    mic.setAttribute('aria-pressed', String(muted));
    mic.querySelector('span').textContent = muted ? 'Unmute' : 'Mute';
    updateLocalTile();
  });
  cam.addEventListener('click', () => {
    const off = cam.getAttribute('aria-pressed') !== 'true';
    app.room?.mute('video', off);
    cam.setAttribute('aria-pressed', String(off));
    cam.querySelector('span').textContent = off ? 'Start video' : 'Stop video';
    updateLocalTile();
  });
  screen.addEventListener('click', async () => {
    const room = app.room;
    if (!room) return;
    if (room.localStreams.screen) {
      room.unpublish({ screen: true });
      return;
    }
    try {
      const { screen: s } = await room.publish({ screen: true });
      if (!s) return;
      screen.setAttribute('aria-pressed', 'true');
      screen.querySelector('span').textContent = 'Stop sharing';
      const tile = makeTile('local', 'screen', 'You', true);
      tile.classList.remove('local');
      tile.classList.add('local-screen');
      tile.querySelector('video').srcObject = s;
      s.getVideoTracks()[0]?.addEventListener('ended', () => {
        tile.remove();
        screen.setAttribute('aria-pressed', 'false');
        screen.querySelector('span').textContent = 'Share screen';
        relayout();
      });
      const stop = () => {
        if (!room.localStreams.screen) {
          tile.remove();
          screen.setAttribute('aria-pressed', 'false');
          screen.querySelector('span').textContent = 'Share screen';
          relayout();
          room.off('participant_updated', stop);
        }
      };
      room.on('participant_updated', stop);
    } catch (err) {
      if (err.name !== 'NotAllowedError') showError(`Screen share failed: ${err.message}`);
    }
  });
  $('#btn-leave').addEventListener('click', () => {
    app.room?.leave();
    location.href = `/?room=${encodeURIComponent(roomName)}`;
  });
}

// ---------------------------------------------------------------- tabs, chat

function setupTabs() {
  document.querySelectorAll('.tabs button').forEach((btn) => {
    btn.addEventListener('click', () => {
      document.querySelectorAll('.tabs button').forEach((b) => b.setAttribute('aria-selected', String(b === btn)));
      for (const name of ['chat', 'files', 'stats']) $(`#panel-${name}`).hidden = name !== btn.dataset.tab;
      if (btn.dataset.tab === 'chat') {
        $('#chat-unread').hidden = true;
        $('#chat-unread').textContent = '';
      }
    });
  });
}

function setupChat() {
  $('#chat-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const input = $('#chat-input');
    const text = input.value.trim();
    if (!text) return;
    sendChat(text);
    input.value = '';
  });
}

function sendChat(text) {
  const room = app.room;
  if (!room) return 0;
  const ts = Date.now();
  const n = room.send({ type: 'chat', text, ts });
  addChat({ from: 'You', fromId: room.localParticipant?.id, text, ts, mine: true });
  return n;
}

function addChat(m) {
  app.chat.push(m);
  const li = document.createElement('li');
  if (m.mine) li.className = 'mine';
  const who = document.createElement('span');
  who.className = 'who';
  who.textContent = m.from;
  const text = document.createElement('span');
  text.className = 'text';
  text.textContent = m.text;
  li.append(who, text);
  li.title = new Date(m.ts).toLocaleTimeString();
  const log = $('#chat-log');
  log.append(li);
  log.scrollTop = log.scrollHeight;
  if (!m.mine && $('#panel-chat').hidden) {
    const badge = $('#chat-unread');
    badge.hidden = false;
    badge.textContent = String((Number(badge.textContent) || 0) + 1);
  }
}

function systemMessage(text) {
  const li = document.createElement('li');
  li.className = 'system';
  li.textContent = text;
  const log = $('#chat-log');
  log.append(li);
  log.scrollTop = log.scrollHeight;
}

// ---------------------------------------------------------------- files

function setupFiles() {
  const input = $('#file-input');
  input.addEventListener('change', () => {
    const file = input.files && input.files[0];
    if (file) sendFile(file).catch((err) => showError(`File transfer failed: ${err.message}`));
    input.value = '';
  });
}

function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function fileItem(id, direction, name, size, who) {
  let li = document.querySelector(`#file-list li[data-id="${CSS.escape(id)}"][data-direction="${direction}"]`);
  if (li) return li;
  li = document.createElement('li');
  li.dataset.id = id;
  li.dataset.direction = direction;
  li.innerHTML = '<div><strong class="fname"></strong> <span class="muted meta"></span></div><progress max="100" value="0"></progress><div class="status muted"></div>';
  li.querySelector('.fname').textContent = name;
  li.querySelector('.meta').textContent = `${fmtBytes(size)} · ${direction === 'send' ? 'to everyone' : `from ${who}`}`;
  $('#file-list').prepend(li);
  return li;
}

async function sendFile(file) {
  const room = app.room;
  if (!room) throw new Error('not in a room');
  if (room.participants.size === 0) {
    showError('Nobody else is in the room yet.');
    return [];
  }
  const results = await room.sendFile(file);
  for (const r of results) {
    const li = document.querySelector(`#file-list li[data-direction="send"]`);
    if (li) {
      const status = li.querySelector('.status');
      const allOk = results.every((x) => x.ok);
      status.textContent = allOk ? `✓ delivered, checksum OK (${results.length} peer${results.length > 1 ? 's' : ''})` : '✗ checksum mismatch at a receiver';
      status.className = `status ${allOk ? 'ok' : 'bad'}`;
    }
    void r;
  }
  return results;
}

function fileProgress(pr) {
  const who = pr.participant ? pr.participant.name : '';
  const li = fileItem(pr.id, pr.direction, pr.name, pr.size, who);
  const pct = pr.size > 0 ? Math.min(100, Math.round((pr.bytes / pr.size) * 100)) : 100;
  li.querySelector('progress').value = pct;
  li.dataset.progress = String(pct);
  if (li.querySelector('.status').textContent === '' || pct < 100) {
    li.querySelector('.status').textContent = `${pct} % ${pr.direction === 'send' ? 'sent' : 'received'}`;
  }
}

function fileArrived(p, f) {
  const li = fileItem(f.id, 'receive', f.name, f.size, p.name);
  li.querySelector('progress').value = 100;
  li.dataset.progress = '100';
  li.dataset.checksum = f.checksumOk ? 'ok' : 'bad';
  const status = li.querySelector('.status');
  status.className = `status ${f.checksumOk ? 'ok' : 'bad'}`;
  status.textContent = f.checksumOk ? '✓ checksum OK ' : '✗ checksum mismatch ';
  const a = document.createElement('a');
  a.href = URL.createObjectURL(f.blob);
  a.download = f.name;
  a.textContent = 'Download';
  status.append(a);
  app.files.push({ id: f.id, name: f.name, size: f.size, sha256: f.sha256, expectedSha256: f.expectedSha256, checksumOk: f.checksumOk, from: p.id });
  systemMessage(`${p.name} sent ${f.name} (${fmtBytes(f.size)})${f.checksumOk ? '' : ' — checksum mismatch!'}`);
}

// ---------------------------------------------------------------- stats

async function refreshStats() {
  const room = app.room;
  if (!room) return;
  let stats;
  try {
    stats = await room.getStats();
  } catch (_) {
    return;
  }
  app.lastStats = stats;
  const body = $('#stats-body');
  const rows = Object.values(stats);
  if (rows.length === 0) {
    body.innerHTML = '<tr><td colspan="6" class="muted">No peers yet.</td></tr>';
    return;
  }
  body.textContent = '';
  for (const s of rows) {
    const tr = document.createElement('tr');
    tr.dataset.pid = s.participantId;
    const path = s.path ? `${s.path} (${s.local?.type}/${s.remote?.type}${s.local?.type === 'relay' && s.local.relayProtocol ? ` via ${s.local.relayProtocol}` : ''})` : s.connectionState;
    const cells = [
      s.name,
      path,
      s.rttMs != null ? `${s.rttMs.toFixed(0)} ms` : '–',
      `${(s.inboundBitrate / 1000).toFixed(0)} kb/s`,
      `${(s.outboundBitrate / 1000).toFixed(0)} kb/s`,
      `${(s.packetLoss * 100).toFixed(1)} %`,
    ];
    cells.forEach((c, i) => {
      const td = document.createElement('td');
      td.textContent = c;
      if (i === 1 && s.path) td.className = `path-${s.path}`;
      tr.append(td);
    });
    body.append(tr);
  }
}
