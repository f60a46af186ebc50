//! Touch-ups of the SDP answers str0m writes.
//!
//! str0m lists payload types in its own configured order (VP8 before H.264), in answers and offers alike. The
//! first codec of an m-line is the one the other side sends (an offerer sends the answer's first codec, an
//! answerer the offer's), so a browser that prefers H.264 (`setCodecPreferences`) would still be made to send
//! VP8. [`follow_codec_order`] reorders each video m-line of our description like the participant's own latest
//! one, so its preference wins among the codecs both sides have.

/// Reorders the payload types on each `m=video` line of `ours` by their position on the same m-line (same
/// index) of `theirs` (the participant's offer, or its latest answer when we offer again); payload types
/// `theirs` does not list keep their order after the others, m-lines it does not have are unchanged. Audio
/// m-lines are left alone (str0m puts RED before Opus on purpose).
pub(crate) fn follow_codec_order(theirs: &str, ours: &str) -> String {
    let offered: Vec<Option<Vec<&str>>> = theirs
        .lines()
        .filter(|l| l.starts_with("m="))
        .map(|l| {
            l.trim_end()
                .strip_prefix("m=video ")
                .map(|rest| rest.split(' ').skip(2).collect())
        })
        .collect();
    let mut out = String::with_capacity(ours.len());
    let mut index = 0;
    for line in ours.split_inclusive('\n') {
        if !line.starts_with("m=") {
            out.push_str(line);
            continue;
        }
        let this = index;
        index += 1;
        let body = line.trim_end_matches(['\r', '\n']);
        let ending = &line[body.len()..];
        let (Some(rest), Some(Some(order))) = (body.strip_prefix("m=video "), offered.get(this))
        else {
            out.push_str(line);
            continue;
        };
        let mut fields: Vec<&str> = rest.split(' ').collect();
        if fields.len() < 3 {
            out.push_str(line);
            continue;
        }
        let pts = &mut fields[2..];
        // A stable sort: payload types absent from theirs go last, in str0m's order.
        pts.sort_by_key(|pt| order.iter().position(|o| o == pt).unwrap_or(usize::MAX));
        out.push_str("m=video ");
        out.push_str(&fields.join(" "));
        out.push_str(ending);
    }
    out
}

/// The audio and video m-lines of our description on which we receive (`a=recvonly` or `a=sendrecv`): their
/// mid and kind. Used on our answer to a participant's offer, to announce its tracks to the room before its
/// media connection is up (str0m reports them only once it is).
pub(crate) fn receiving_media(ours: &str) -> Vec<(String, str0m::media::MediaKind)> {
    use str0m::media::MediaKind;
    let mut found = Vec::new();
    let mut section: Option<(Option<MediaKind>, Option<&str>, bool)> = None;
    let close = |s: Option<(Option<MediaKind>, Option<&str>, bool)>, found: &mut Vec<_>| {
        if let Some((Some(kind), Some(mid), true)) = s {
            found.push((mid.to_owned(), kind));
        }
    };
    for line in ours.lines().map(str::trim_end) {
        if let Some(rest) = line.strip_prefix("m=") {
            close(section.take(), &mut found);
            let kind = if rest.starts_with("audio ") {
                Some(MediaKind::Audio)
            } else if rest.starts_with("video ") {
                Some(MediaKind::Video)
            } else {
                None
            };
            section = Some((kind, None, false));
        } else if let Some((_, mid, receiving)) = section.as_mut() {
            if let Some(m) = line.strip_prefix("a=mid:") {
                *mid = Some(m);
            } else if line == "a=recvonly" || line == "a=sendrecv" {
                *receiving = true;
            }
        }
    }
    close(section, &mut found);
    found
}

#[cfg(test)]
mod tests {
    use super::{follow_codec_order, receiving_media};

    #[test]
    fn video_payload_types_follow_the_offer_order() {
        let offer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 63\r\na=mid:0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102 103 96 97 45\r\na=mid:1\r\n";
        let answer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 63 111\r\na=mid:0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103\r\na=mid:1\r\n";
        let fixed = follow_codec_order(offer, answer);
        assert_eq!(
            fixed,
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 63 111\r\na=mid:0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102 103 96 97\r\na=mid:1\r\n",
            "video reordered like the offer (H.264 102 + its RTX first), audio untouched (RED first)"
        );
    }

    #[test]
    fn payload_types_the_offer_lacks_go_last_and_odd_lines_pass_through() {
        let offer = "m=video 9 UDP/TLS/RTP/SAVPF 98 96\n";
        let answer = "m=video 9 UDP/TLS/RTP/SAVPF 96 120 98\nm=video 0 UDP/TLS/RTP/SAVPF\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\n";
        assert_eq!(
            follow_codec_order(offer, answer),
            "m=video 9 UDP/TLS/RTP/SAVPF 98 96 120\nm=video 0 UDP/TLS/RTP/SAVPF\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\n"
        );
        assert_eq!(follow_codec_order("", "garbage\r\n"), "garbage\r\n");
    }

    #[test]
    fn receiving_media_lists_the_audio_and_video_mlines_we_receive_on() {
        use str0m::media::MediaKind;
        let answer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=recvonly\r\n\
                      m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=recvonly\r\n\
                      m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=sendonly\r\n\
                      m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:3\r\n\
                      m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:4\r\na=inactive\r\n\
                      m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=sendrecv\r\na=mid:5\r\n";
        assert_eq!(
            receiving_media(answer),
            vec![
                ("0".to_owned(), MediaKind::Audio),
                ("1".to_owned(), MediaKind::Video),
                ("5".to_owned(), MediaKind::Video)
            ]
        );
        assert!(receiving_media("not sdp").is_empty());
    }
}
