"""WHIP publisher on aiortc (an independent WebRTC implementation), for tests/sfu/whip.test.mjs.

Usage: python3 aiortc_whip.py <whip url> <bearer token> <seconds>
Publishes aiortc's synthetic video (VP8) and audio (Opus) for <seconds>, then DELETEs the session.
Prints "published <Location>" once the answer is applied, and "connected" when ICE+DTLS are up.
"""
import asyncio
import sys
import urllib.request

from aiortc import AudioStreamTrack, RTCPeerConnection, RTCSessionDescription, VideoStreamTrack


def http(method, url, token, body=None):
    req = urllib.request.Request(url, data=body, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        req.add_header("Content-Type", "application/sdp")
    with urllib.request.urlopen(req, timeout=10) as res:
        return res.status, res.headers.get("Location"), res.read().decode()


async def main(url, token, seconds):
    pc = RTCPeerConnection()
    connected = asyncio.Event()

    @pc.on("connectionstatechange")
    def on_state():
        print("state", pc.connectionState, flush=True)
        if pc.connectionState == "connected":
            connected.set()

    pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
    pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    loop = asyncio.get_running_loop()
    status, location, answer = await loop.run_in_executor(
        None, http, "POST", url, token, pc.localDescription.sdp.encode()
    )
    assert status == 201, status
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    print("published", location, flush=True)
    await asyncio.wait_for(connected.wait(), 20)
    print("connected", flush=True)
    await asyncio.sleep(seconds)
    base = url.split("/whip/")[0]
    status, _, _ = await loop.run_in_executor(None, http, "DELETE", base + location, token)
    print("deleted", status, flush=True)
    await pc.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
