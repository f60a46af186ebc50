"""WHIP/WHEP session plumbing shared by tests/sfu/aiortc_whip.py and aiortc_whep.py (aiortc clients).

`Session(pc)` watches the peer connection's state; `await session.start(url, token, label)` POSTs the local
offer to a WHIP or WHEP endpoint with the bearer token, applies the answer, prints "<label> <Location>", waits (20 s
at most) for ICE+DTLS and prints "connected"; `await session.end(url, token)` DELETEs the session and closes the
peer connection.
"""
import asyncio
import urllib.request

from aiortc import RTCSessionDescription


def http(method, url, token, body=None):
    req = urllib.request.Request(url, data=body, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        req.add_header("Content-Type", "application/sdp")
    with urllib.request.urlopen(req, timeout=10) as res:
        return res.status, res.headers.get("Location"), res.read().decode()


class Session:
    def __init__(self, pc):
        self.pc = pc
        self.location = None
        self.connected = asyncio.Event()

        @pc.on("connectionstatechange")
        def on_state():
            print("state", pc.connectionState, flush=True)
            if pc.connectionState == "connected":
                self.connected.set()

    async def start(self, url, token, label):
        pc = self.pc
        await pc.setLocalDescription(await pc.createOffer())
        loop = asyncio.get_running_loop()
        status, self.location, answer = await loop.run_in_executor(
            None, http, "POST", url, token, pc.localDescription.sdp.encode()
        )
        assert status == 201, status
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        print(label, self.location, flush=True)
        await asyncio.wait_for(self.connected.wait(), 20)
        print("connected", flush=True)

    async def end(self, url, token):
        # The Location is a path on the same origin as the endpoint (/whip/<room> or /whep/<room>).
        base = url.split("/whip/")[0].split("/whep/")[0]
        loop = asyncio.get_running_loop()
        status, _, _ = await loop.run_in_executor(None, http, "DELETE", base + self.location, token)
        print("deleted", status, flush=True)
        await self.pc.close()
