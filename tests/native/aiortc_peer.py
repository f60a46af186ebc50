#!/usr/bin/env python3
"""An aiortc participant speaking Switchboard's signaling protocol v1 (docs/protocol.md).

Joins a room over the WebSocket (a minimal RFC 6455 client on the standard library: no extra package),
follows the mesh rules (the later joiner offers to everyone in its roster; otherwise it answers), opens the
SDK's three negotiated data channels (data id 0, lossy id 1, file id 2), sends chat messages on `data` and
prints the ones it receives:

    python3 tests/native/aiortc_peer.py http://127.0.0.1:8080 --room demo --name Py \
        --send "hello from aiortc" --expect "hello from cli" --timeout 60

stdout lines: `JOINED <id>`, `OPEN <peer id>`, `CHAT <name>: <text>`, `SENT <text>`, `DONE`.
Exit status 0 once every --expect text arrived and every --send text was sent, 1 on timeout or error.
"""

import argparse
import asyncio
import base64
import json
import os
import struct
import sys
import time
import urllib.parse
import urllib.request

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def out(line):
    print(line, flush=True)


class WebSocket:
    """Just enough RFC 6455 for a text-frame protocol: client handshake, masked sends, ping/close."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, url):
        u = urllib.parse.urlparse(url)
        if u.scheme != "ws":
            raise ValueError(f"only ws:// is supported, got {url}")
        port = u.port or 80
        reader, writer = await asyncio.open_connection(u.hostname, port)
        key = base64.b64encode(os.urandom(16)).decode()
        path = u.path or "/"
        req = (
            f"GET {path} HTTP/1.1\r\nHost: {u.hostname}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        writer.write(req.encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            raise ConnectionError(f"WebSocket upgrade refused: {status.decode(errors='replace')}")
        return cls(reader, writer)

    async def _send_frame(self, opcode, payload):
        header = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 65536:
            header += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(header + mask + masked)
        await self.writer.drain()

    async def send(self, obj):
        await self._send_frame(0x1, json.dumps(obj).encode())

    async def recv(self):
        """The next text message (JSON-decoded); None when the socket closed."""
        message = b""
        while True:
            try:
                b0, b1 = await self.reader.readexactly(2)
            except (asyncio.IncompleteReadError, ConnectionError):
                return None
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            mask = await self.reader.readexactly(4) if b1 & 0x80 else None
            payload = await self.reader.readexactly(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x8:
                return None
            if opcode == 0x9:
                await self._send_frame(0xA, payload)
                continue
            if opcode in (0x1, 0x0, 0x2):
                message += payload
                if b0 & 0x80:
                    try:
                        return json.loads(message)
                    except ValueError:
                        log("malformed frame ignored")
                        message = b""

    def close(self):
        self.writer.close()


class Peer:
    def __init__(self, app, remote_id, polite):
        self.app, self.remote_id, self.polite = app, remote_id, polite
        self.pc = RTCPeerConnection(app.rtc_config)
        self.channels = {
            "data": self.pc.createDataChannel("data", negotiated=True, id=0),
            "lossy": self.pc.createDataChannel("lossy", negotiated=True, id=1, ordered=False, maxRetransmits=0),
            "file": self.pc.createDataChannel("file", negotiated=True, id=2),
        }
        self.open = asyncio.Event()
        data = self.channels["data"]

        @data.on("open")
        def _open():
            out(f"OPEN {remote_id}")
            self.open.set()

        @data.on("message")
        def _message(m):
            if isinstance(m, bytes):
                return
            try:
                msg = json.loads(m)
            except ValueError:
                return
            if msg.get("type") == "chat":
                app.on_chat(remote_id, str(msg.get("text", "")))

        @self.pc.on("connectionstatechange")
        async def _state():
            log(f"peer {remote_id}: {self.pc.connectionState}")

    async def offer(self):
        await self.pc.setLocalDescription(await self.pc.createOffer())
        await self.app.ws.send({"type": "offer", "to": self.remote_id, "sdp": self.pc.localDescription.sdp})

    async def on_description(self, kind, sdp):
        if kind == "offer" and self.pc.signalingState != "stable":
            if not self.polite:
                log(f"offer collision with {self.remote_id}: impolite, ignored")
                return
            await self.pc.setLocalDescription(RTCSessionDescription(sdp="", type="rollback"))
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
        if kind == "offer":
            await self.pc.setLocalDescription(await self.pc.createAnswer())
            await self.app.ws.send({"type": "answer", "to": self.remote_id, "sdp": self.pc.localDescription.sdp})

    async def on_candidate(self, c):
        if not c or not c.get("candidate"):
            return
        try:
            cand = candidate_from_sdp(c["candidate"].split(":", 1)[1])
            cand.sdpMid = c.get("sdp_mid")
            cand.sdpMLineIndex = c.get("sdp_mline_index")
            await self.pc.addIceCandidate(cand)
        except Exception as e:  # a candidate aiortc cannot use (e.g. TCP) is not fatal
            log(f"candidate ignored: {e}")

    async def send_chat(self, text):
        await self.open.wait()
        self.channels["data"].send(json.dumps({"type": "chat", "text": text, "ts": int(time.time() * 1000)}))


class App:
    def __init__(self, args):
        self.args = args
        self.peers = {}
        self.names = {}
        self.expect = list(args.expect)
        self.got_all = asyncio.Event()
        if not self.expect:
            self.got_all.set()
        self.ws = None
        self.local_id = None
        self.rtc_config = RTCConfiguration(iceServers=[])

    def on_chat(self, remote_id, text):
        name = self.names.get(remote_id, remote_id)
        out(f"CHAT {name}: {text}")
        if text in self.expect:
            self.expect.remove(text)
            if not self.expect:
                self.got_all.set()

    def peer(self, remote_id):
        if remote_id not in self.peers:
            self.peers[remote_id] = Peer(self, remote_id, polite=self.local_id > remote_id)
        return self.peers[remote_id]

    async def run(self):
        base = self.args.url.rstrip("/")
        q = urllib.parse.urlencode({"room": self.args.room, "name": self.args.name})
        with urllib.request.urlopen(f"{base}/dev/token?{q}", timeout=10) as r:
            token = json.load(r)["token"]
        ws_url = base.replace("http://", "ws://", 1) + "/ws"
        self.ws = await WebSocket.connect(ws_url)
        await self.ws.send({"type": "join", "token": token, "protocol": 1})
        joined = await self.ws.recv()
        if not joined or joined.get("type") != "joined":
            raise RuntimeError(f"join refused: {joined}")
        self.local_id = joined["participant"]["id"]
        out(f"JOINED {self.local_id}")
        if self.args.use_ice_servers:
            self.rtc_config = RTCConfiguration(
                iceServers=[
                    RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
                    for s in joined.get("ice_servers", [])
                ]
            )
        for p in joined.get("participants", []):
            self.names[p["id"]] = p.get("name") or p.get("identity") or p["id"]
            await self.peer(p["id"]).offer()  # mesh rule: the later joiner offers
        sender = asyncio.ensure_future(self.send_all())
        reader = asyncio.ensure_future(self.read_loop())
        try:
            await asyncio.wait_for(asyncio.gather(sender, self.got_all.wait()), self.args.timeout)
            await asyncio.sleep(0.5)  # let the last chat leave the SCTP queue
            out("DONE")
            return 0
        except asyncio.TimeoutError:
            log(f"timed out; still expecting {self.expect}")
            return 1
        finally:
            reader.cancel()
            try:
                await self.ws.send({"type": "leave"})
            except Exception:
                pass
            self.ws.close()
            for p in self.peers.values():
                await p.pc.close()

    async def send_all(self):
        # Send to the first peer whose data channel opens (wait for one to exist).
        while not self.peers:
            await asyncio.sleep(0.05)
        peer = next(iter(self.peers.values()))
        for text in self.args.send:
            await peer.send_chat(text)
            out(f"SENT {text}")

    async def read_loop(self):
        while True:
            msg = await self.ws.recv()
            if msg is None:
                log("signaling closed")
                return
            t = msg.get("type")
            if t in ("offer", "answer"):
                await self.peer(msg["from"]).on_description(t, msg["sdp"])
            elif t == "candidate":
                if msg["from"] in self.peers:
                    await self.peers[msg["from"]].on_candidate(msg.get("candidate"))
            elif t == "participant_joined":
                p = msg["participant"]
                self.names[p["id"]] = p.get("name") or p.get("identity") or p["id"]
                out(f"PARTICIPANT {self.names[p['id']]}")
            elif t == "error":
                log(f"server error: {msg}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url", help="http://host:port of switchboard serve (dev mode)")
    ap.add_argument("--room", required=True)
    ap.add_argument("--name", default="aiortc")
    ap.add_argument("--send", action="append", default=[], help="chat text to send (repeatable)")
    ap.add_argument("--expect", action="append", default=[], help="chat text to wait for (repeatable)")
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--use-ice-servers", action="store_true", help="use joined.ice_servers (STUN/TURN)")
    args = ap.parse_args()
    try:
        sys.exit(asyncio.run(App(args).run()))
    except Exception as e:
        log(f"error: {e!r}")
        sys.exit(1)


if __name__ == "__main__":
    main()
