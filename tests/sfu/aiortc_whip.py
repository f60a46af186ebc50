"""WHIP publisher on aiortc (an independent WebRTC implementation), for tests/sfu/whip.test.mjs.

Usage: python3 aiortc_whip.py <whip url> <bearer token> <seconds>
Publishes aiortc's synthetic video (VP8) and audio (Opus) for <seconds>, then DELETEs the session.
Prints "published <Location>" once the answer is applied, and "connected" when ICE+DTLS are up.
"""
import asyncio
import sys

from aiortc import AudioStreamTrack, RTCPeerConnection, VideoStreamTrack

from aiortc_session import Session


async def main(url, token, seconds):
    pc = RTCPeerConnection()
    session = Session(pc)
    pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
    pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    await session.start(url, token, "published")
    await asyncio.sleep(seconds)
    await session.end(url, token)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
