"""WHEP viewer on aiortc (an independent WebRTC implementation), for tests/sfu/whip.test.mjs.

Usage: python3 aiortc_whep.py <whep url> <bearer token> <seconds>
Offers to receive video and audio, POSTs the offer to <whep url>, applies the answer, then decodes the video it
receives for <seconds> after the connection is up (aiortc's own depacketizer and decoder: `track.recv()` returns
decoded `av.VideoFrame`s), and DELETEs the session. Prints "viewing <Location>", "connected", and at the end one
line "result <json>": frames decoded in the window, their sizes, how many had distinct pixels (the picture moves),
how long after "connected" the first frame came, and the audio frames received.
"""
import asyncio
import hashlib
import json
import sys
import time

from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from aiortc_session import Session


class Counts:
    def __init__(self):
        self.window_start = None  # monotonic time the connection came up
        self.window_end = None
        self.frames = 0
        self.sizes = {}
        self.distinct = set()
        self.first_frame_s = None
        self.audio_frames = 0


async def read_video(track, counts):
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        now = time.monotonic()
        if counts.window_start is None or now < counts.window_start:
            continue
        if counts.window_end is not None and now > counts.window_end:
            continue
        counts.frames += 1
        if counts.first_frame_s is None:
            counts.first_frame_s = round(now - counts.window_start, 3)
        size = f"{frame.width}x{frame.height}"
        counts.sizes[size] = counts.sizes.get(size, 0) + 1
        # The luma plane's digest: a decoded moving picture gives distinct ones.
        counts.distinct.add(hashlib.sha1(bytes(frame.planes[0])).hexdigest())


async def read_audio(track, counts):
    while True:
        try:
            await track.recv()
        except MediaStreamError:
            return
        counts.audio_frames += 1


async def main(url, token, seconds):
    pc = RTCPeerConnection()
    session = Session(pc)
    counts = Counts()
    readers = []

    @pc.on("track")
    def on_track(track):
        print("track", track.kind, flush=True)
        reader = read_video if track.kind == "video" else read_audio
        readers.append(asyncio.ensure_future(reader(track, counts)))

    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    await session.start(url, token, "viewing")
    counts.window_start = time.monotonic()
    counts.window_end = counts.window_start + seconds
    await asyncio.sleep(seconds)
    result = {
        "seconds": seconds,
        "frames": counts.frames,
        "sizes": counts.sizes,
        "distinct": len(counts.distinct),
        "first_frame_s": counts.first_frame_s,
        "audio_frames": counts.audio_frames,
    }
    print("result", json.dumps(result), flush=True)
    await session.end(url, token)
    for r in readers:
        r.cancel()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
