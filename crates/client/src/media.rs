//! Media without codecs: publish a VP8 IVF file (looped, at its own frame rate) and Opus silence; record
//! received VP8 to IVF and Opus to Ogg. Frames come and go whole (str0m packetizes and depacketizes).

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use str0m::media::{Frequency, MediaKind, MediaTime};
use tokio::sync::broadcast;

/// What the room publishes and records.
#[derive(Debug, Clone, Default)]
pub(crate) struct MediaConfig {
    /// Frames to send to every peer (subscribe per peer); `None`: nothing is published.
    pub publish: Option<broadcast::Sender<Arc<OutFrame>>>,
    /// Directory for recordings; `None`: nothing is recorded.
    pub record_dir: Option<PathBuf>,
    /// Stops the publisher tasks when the last copy of the configuration is gone (held, never read).
    #[allow(dead_code)]
    pub tasks: Option<Arc<PublisherTasks>>,
}

/// The publisher's tasks, aborted on drop.
#[derive(Debug)]
pub(crate) struct PublisherTasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for PublisherTasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

impl MediaConfig {
    pub fn enabled(&self) -> bool {
        self.publish.is_some() || self.record_dir.is_some()
    }
}

/// One frame to send.
#[derive(Debug)]
pub(crate) struct OutFrame {
    pub kind: MediaKind,
    pub data: Arc<[u8]>,
    pub time: MediaTime,
    pub keyframe: bool,
}

/// A parsed IVF file.
#[derive(Debug, Clone)]
pub(crate) struct Ivf {
    pub fourcc: [u8; 4],
    pub width: u16,
    pub height: u16,
    /// Time base: `num / den` seconds per pts unit.
    pub den: u32,
    pub num: u32,
    pub frames: Vec<(u64, Vec<u8>)>,
}

/// Parses an IVF file (32-byte header, then 12-byte frame headers).
pub(crate) fn parse_ivf(data: &[u8]) -> Result<Ivf, String> {
    if data.len() < 32 || &data[0..4] != b"DKIF" {
        return Err("not an IVF file (no DKIF signature)".into());
    }
    let u16le = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]);
    let u32le = |o: usize| u32::from_le_bytes([data[o], data[o + 1], data[o + 2], data[o + 3]]);
    let header_len = usize::from(u16le(6)).max(32);
    let mut fourcc = [0u8; 4];
    fourcc.copy_from_slice(&data[8..12]);
    let (width, height, den, num) = (u16le(12), u16le(14), u32le(16), u32le(20));
    if den == 0 || num == 0 {
        return Err("IVF time base is zero".into());
    }
    let mut frames = Vec::new();
    let mut off = header_len;
    while off + 12 <= data.len() {
        let size = u32le(off) as usize;
        let pts = u64::from_le_bytes(
            data[off + 4..off + 12]
                .try_into()
                .map_err(|_| "bad frame header")?,
        );
        let start = off + 12;
        let Some(frame) = data.get(start..start + size) else {
            break; // truncated last frame
        };
        frames.push((pts, frame.to_vec()));
        off = start + size;
    }
    if frames.is_empty() {
        return Err("IVF file has no frames".into());
    }
    Ok(Ivf {
        fourcc,
        width,
        height,
        den,
        num,
        frames,
    })
}

/// A VP8 keyframe has the P bit (bit 0 of the first byte) clear.
pub(crate) fn vp8_is_keyframe(frame: &[u8]) -> bool {
    frame.first().is_some_and(|b| b & 1 == 0)
}

/// Width and height from a VP8 keyframe header.
fn vp8_dimensions(frame: &[u8]) -> Option<(u16, u16)> {
    if !vp8_is_keyframe(frame) || frame.len() < 10 || frame[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff;
    let h = u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff;
    Some((w, h))
}

/// Loads `path` and starts a task that broadcasts its frames (looping) plus Opus silence every 20 ms.
#[allow(clippy::type_complexity)]
pub(crate) fn start_publisher(
    path: &Path,
) -> Result<(broadcast::Sender<Arc<OutFrame>>, Arc<PublisherTasks>), crate::Error> {
    let mut data = Vec::new();
    File::open(path)?.read_to_end(&mut data)?;
    let ivf =
        parse_ivf(&data).map_err(|e| crate::Error::Protocol(format!("{}: {e}", path.display())))?;
    if &ivf.fourcc != b"VP80" {
        return Err(crate::Error::Protocol(format!(
            "{}: only VP8 IVF files can be published (fourcc {:?})",
            path.display(),
            String::from_utf8_lossy(&ivf.fourcc)
        )));
    }
    tracing::info!(
        file = %path.display(),
        width = ivf.width,
        height = ivf.height,
        frames = ivf.frames.len(),
        "publishing VP8 from an IVF file"
    );
    let (tx, _) = broadcast::channel(256);
    let vtx = tx.clone();
    let to_90k = move |pts: u64| pts * 90_000 * u64::from(ivf.num) / u64::from(ivf.den);
    let frames = ivf.frames.clone();
    let first = frames[0].0;
    let last = frames[frames.len() - 1].0;
    // One loop lasts until the last frame plus one frame interval.
    let frame_90k = if frames.len() > 1 {
        to_90k(last - first) / (frames.len() as u64 - 1)
    } else {
        3000
    };
    let loop_90k = to_90k(last - first) + frame_90k.max(1);
    let video = tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        let mut base = 0u64;
        loop {
            for (pts, f) in &frames {
                let t = base + to_90k(pts - first);
                tokio::time::sleep_until(start + Duration::from_micros(t * 100 / 9)).await;
                let frame = OutFrame {
                    kind: MediaKind::Video,
                    keyframe: vp8_is_keyframe(f),
                    data: f.clone().into(),
                    time: MediaTime::new(t, Frequency::NINETY_KHZ),
                };
                if vtx.receiver_count() > 0 {
                    let _ = vtx.send(Arc::new(frame));
                }
            }
            base += loop_90k;
        }
    });
    let atx = tx.clone();
    let audio = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let start = tokio::time::Instant::now();
        loop {
            let now = tick.tick().await;
            let t = (now - start).as_micros() as u64 * 48 / 1000;
            if atx.receiver_count() > 0 {
                let _ = atx.send(Arc::new(silence(t)));
            }
        }
    });
    Ok((tx, Arc::new(PublisherTasks(vec![video, audio]))))
}

/// A 20 ms Opus frame of silence (CELT, fullband) at 48 kHz time `t`.
fn silence(t: u64) -> OutFrame {
    OutFrame {
        kind: MediaKind::Audio,
        data: Arc::from(&[0xf8u8, 0xff, 0xfe][..]),
        time: MediaTime::new(t, Frequency::FORTY_EIGHT_KHZ),
        keyframe: true,
    }
}

/// Writes VP8 frames into an IVF file (time base 1/90000, RTP time; the header is kept up to date).
pub(crate) struct IvfWriter {
    file: BufWriter<File>,
    first: Option<u64>,
    last: u64,
    frames: u32,
    width: u16,
    height: u16,
}

impl IvfWriter {
    pub fn create(path: &Path) -> std::io::Result<IvfWriter> {
        let mut w = IvfWriter {
            file: BufWriter::new(File::create(path)?),
            first: None,
            last: 0,
            frames: 0,
            width: 0,
            height: 0,
        };
        w.write_header()?;
        Ok(w)
    }

    fn write_header(&mut self) -> std::io::Result<()> {
        let mut h = Vec::with_capacity(32);
        h.extend_from_slice(b"DKIF");
        h.extend_from_slice(&0u16.to_le_bytes());
        h.extend_from_slice(&32u16.to_le_bytes());
        h.extend_from_slice(b"VP80");
        h.extend_from_slice(&self.width.to_le_bytes());
        h.extend_from_slice(&self.height.to_le_bytes());
        h.extend_from_slice(&90_000u32.to_le_bytes());
        h.extend_from_slice(&1u32.to_le_bytes());
        // The "length" field: ffmpeg reads it as the stream duration in time-base units (which it is for
        // its own files, written at 1/fps), so write the duration: the last pts plus one mean frame interval.
        let interval = if self.frames > 1 {
            self.last / u64::from(self.frames - 1)
        } else {
            0
        };
        let length = u32::try_from(self.last + interval).unwrap_or(u32::MAX);
        h.extend_from_slice(&length.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        self.file.write_all(&h)
    }

    /// Frames before the first keyframe are skipped (a decoder could not use them). `time90k` is the RTP
    /// time. Returns whether the frame was written.
    pub fn write(&mut self, time90k: u64, frame: &[u8]) -> std::io::Result<bool> {
        let first = match self.first {
            Some(f) => f,
            None => {
                let Some((w, h)) = vp8_dimensions(frame) else {
                    return Ok(false);
                };
                self.width = w;
                self.height = h;
                self.first = Some(time90k);
                time90k
            }
        };
        let pts = time90k.saturating_sub(first).max(self.last);
        self.last = pts;
        self.file.write_all(&(frame.len() as u32).to_le_bytes())?;
        self.file.write_all(&pts.to_le_bytes())?;
        self.file.write_all(frame)?;
        self.frames += 1;
        if self.frames % 30 == 1 {
            self.finish()?;
        }
        Ok(true)
    }

    /// Rewrites the header (dimensions, duration) and flushes.
    pub fn finish(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        let f = self.file.get_mut();
        let pos = f.stream_position()?;
        f.seek(SeekFrom::Start(0))?;
        self.write_header()?;
        self.file.flush()?;
        self.file.get_mut().seek(SeekFrom::Start(pos))?;
        Ok(())
    }
}

impl Drop for IvfWriter {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Writes Opus packets into an Ogg file (RFC 7845), one packet per page; granule positions from RTP time.
pub(crate) struct OggOpusWriter {
    file: BufWriter<File>,
    serial: u32,
    seq: u32,
    first: Option<u64>,
    granule: u64,
    unflushed: u32,
}

impl OggOpusWriter {
    pub fn create(path: &Path) -> std::io::Result<OggOpusWriter> {
        let mut w = OggOpusWriter {
            file: BufWriter::new(File::create(path)?),
            serial: rand::random(),
            seq: 0,
            first: None,
            granule: 0,
            unflushed: 0,
        };
        let mut head = Vec::new();
        head.extend_from_slice(b"OpusHead");
        head.push(1); // version
        head.push(2); // channels
        head.extend_from_slice(&0u16.to_le_bytes()); // pre-skip
        head.extend_from_slice(&48_000u32.to_le_bytes());
        head.extend_from_slice(&0i16.to_le_bytes()); // gain
        head.push(0); // mapping family
        w.page(&head, 0, 0x02)?;
        let mut tags = Vec::new();
        tags.extend_from_slice(b"OpusTags");
        let vendor = b"switchboard";
        tags.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
        tags.extend_from_slice(vendor);
        tags.extend_from_slice(&0u32.to_le_bytes());
        w.page(&tags, 0, 0)?;
        Ok(w)
    }

    fn page(&mut self, packet: &[u8], granule: u64, flags: u8) -> std::io::Result<()> {
        let mut lacing = vec![255u8; packet.len() / 255];
        lacing.push((packet.len() % 255) as u8);
        if lacing.len() > 255 {
            return Ok(()); // not an Opus packet (at most 1275 bytes per frame)
        }
        let mut p = Vec::with_capacity(27 + lacing.len() + packet.len());
        p.extend_from_slice(b"OggS");
        p.push(0);
        p.push(flags);
        p.extend_from_slice(&granule.to_le_bytes());
        p.extend_from_slice(&self.serial.to_le_bytes());
        p.extend_from_slice(&self.seq.to_le_bytes());
        p.extend_from_slice(&0u32.to_le_bytes());
        p.push(lacing.len() as u8);
        p.extend_from_slice(&lacing);
        p.extend_from_slice(packet);
        let crc = ogg_crc(&p);
        p[22..26].copy_from_slice(&crc.to_le_bytes());
        self.seq += 1;
        self.file.write_all(&p)
    }

    /// `time48k` is the packet's RTP time (48 kHz).
    pub fn write(&mut self, time48k: u64, packet: &[u8]) -> std::io::Result<()> {
        let first = *self.first.get_or_insert(time48k);
        let end = time48k.saturating_sub(first) + opus_samples(packet);
        self.granule = end.max(self.granule);
        let g = self.granule;
        self.page(packet, g, 0)?;
        self.unflushed += 1;
        if self.unflushed >= 50 {
            self.unflushed = 0;
            self.file.flush()?;
        }
        Ok(())
    }
}

impl Drop for OggOpusWriter {
    fn drop(&mut self) {
        let _ = self.file.flush();
    }
}

/// Samples (48 kHz) in an Opus packet, from its TOC byte (RFC 6716 §3.1).
fn opus_samples(packet: &[u8]) -> u64 {
    let Some(&toc) = packet.first() else { return 0 };
    let config = toc >> 3;
    let per_frame_x10: u64 = match config {
        0..=11 => [100, 200, 400, 600][usize::from(config % 4)],
        12..=15 => [100, 200][usize::from(config % 2)],
        _ => [25, 50, 100, 200][usize::from(config % 4)],
    };
    let frames = match toc & 3 {
        0 => 1,
        1 | 2 => 2,
        _ => packet.get(1).map_or(1, |b| u64::from(b & 0x3f)),
    };
    frames * per_frame_x10 * 48 / 10
}

fn ogg_crc(data: &[u8]) -> u32 {
    let mut crc = 0u32;
    for &b in data {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04c1_1db7
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opus_durations() {
        assert_eq!(opus_samples(&[0xf8, 0xff, 0xfe]), 960); // CELT FB 20 ms
        assert_eq!(opus_samples(&[0x78]), 960); // hybrid 20 ms (config 15)
        assert_eq!(opus_samples(&[(16 << 3) | 1]), 2 * 120); // 2 x 2.5 ms
        assert_eq!(opus_samples(&[]), 0);
    }

    #[test]
    fn ivf_roundtrip() {
        let dir = std::env::temp_dir().join(format!("sb-ivf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.ivf");
        let key = [
            0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00, 1, 2, 3,
        ];
        {
            let mut w = IvfWriter::create(&path).unwrap();
            assert!(
                !w.write(1000, &[0x01, 0, 0]).unwrap(),
                "delta frame before keyframe skipped"
            );
            assert!(w.write(3000, &key).unwrap());
            assert!(w.write(6000, &[0x01, 9, 9]).unwrap());
        }
        let ivf = parse_ivf(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(&ivf.fourcc, b"VP80");
        assert_eq!((ivf.width, ivf.height), (320, 240));
        assert_eq!(ivf.frames.len(), 2);
        assert_eq!(ivf.frames[1].0, 3000);
        assert!(parse_ivf(b"nope").is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
