//! Drives Janus's videoroom plugin (Janus 1.1) over its HTTP REST API, so that the same synthetic load runs
//! against Janus: one Janus session holds every handle; one long-poll loop routes events to handles.
//!
//! Publisher: `attach` → `join` (`ptype: publisher`) → `publish` with our offer → Janus answers.
//! Subscriber: `attach` → `join` (`ptype: subscriber`, `streams: [{feed}]`) → Janus offers → `start` with our
//! answer. Our candidates are in our SDP, so each handle then sends trickle `completed`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::peer::{SigIn, SigOut};

type Routes = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Value>>>>;

/// A Janus session over HTTP.
pub struct Janus {
    authority: String,
    path: String,
    session: u64,
    routes: Routes,
    stop: Arc<AtomicBool>,
    tx: AtomicU64,
}

/// `http://host:port/path` → (`host:port`, `/path`).
pub fn split_url(url: &str) -> anyhow::Result<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .context("the Janus URL must be http://host:port/janus")?;
    let (auth, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/janus"),
    };
    if auth.is_empty() {
        bail!("no host in {url}");
    }
    let auth = if auth.contains(':') {
        auth.to_owned()
    } else {
        format!("{auth}:80")
    };
    let path = path.trim_end_matches('/');
    let path = if path.is_empty() { "/janus" } else { path };
    Ok((auth, path.to_owned()))
}

/// One HTTP/1.1 request (`Connection: close`); returns the status and the body parsed as JSON.
async fn http(
    authority: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> anyhow::Result<Value> {
    let fut = async {
        let mut s = TcpStream::connect(authority).await?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.take(16 * 1024 * 1024).read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(timeout, fut)
        .await
        .with_context(|| format!("{method} {path}: timed out"))?
        .with_context(|| format!("{method} {path}"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    let status: u16 = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .context("malformed status line")?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    if status != 200 {
        bail!("{method} {path}: HTTP {status}: {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("{method} {path}: not JSON: {body}"))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

impl Janus {
    /// Creates a session and starts its long-poll loop.
    pub async fn connect(url: &str) -> anyhow::Result<Arc<Janus>> {
        let (authority, path) = split_url(url)?;
        let r = http(
            &authority,
            "POST",
            &path,
            Some(&json!({"janus": "create", "transaction": "c0"})),
            Duration::from_secs(10),
        )
        .await?;
        let session = r["data"]["id"]
            .as_u64()
            .with_context(|| format!("create session: {r}"))?;
        let j = Arc::new(Janus {
            authority,
            path,
            session,
            routes: Arc::new(Mutex::new(HashMap::new())),
            stop: Arc::new(AtomicBool::new(false)),
            tx: AtomicU64::new(1),
        });
        let (auth, poll_path) = (
            j.authority.clone(),
            format!("{}/{}?maxev=100", j.path, j.session),
        );
        let (routes, stop) = (j.routes.clone(), j.stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match http(&auth, "GET", &poll_path, None, Duration::from_secs(45)).await {
                    Ok(v) => {
                        let events = match v {
                            Value::Array(a) => a,
                            other => vec![other],
                        };
                        for ev in events {
                            let Some(sender) = ev["sender"].as_u64() else {
                                continue;
                            };
                            let route = routes.lock().ok().and_then(|r| r.get(&sender).cloned());
                            if let Some(r) = route {
                                let _ = r.send(ev);
                            }
                        }
                    }
                    Err(e) => {
                        tracing::debug!("janus long poll: {e:#}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        Ok(j)
    }

    fn transaction(&self) -> String {
        format!("t{}", self.tx.fetch_add(1, Ordering::Relaxed))
    }

    async fn post(&self, path: &str, mut body: Value) -> anyhow::Result<Value> {
        body["transaction"] = json!(self.transaction());
        let r = http(
            &self.authority,
            "POST",
            path,
            Some(&body),
            Duration::from_secs(20),
        )
        .await?;
        if r["janus"] == "error" {
            bail!("janus error: {}", r["error"]);
        }
        Ok(r)
    }

    /// Attaches a videoroom handle; its events arrive on the receiver.
    pub async fn attach(&self) -> anyhow::Result<(u64, mpsc::UnboundedReceiver<Value>)> {
        let r = self
            .post(
                &format!("{}/{}", self.path, self.session),
                json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}),
            )
            .await?;
        let h = r["data"]["id"]
            .as_u64()
            .with_context(|| format!("attach: {r}"))?;
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut routes) = self.routes.lock() {
            routes.insert(h, tx);
        }
        Ok((h, rx))
    }

    /// A plugin message (with an optional JSEP); returns Janus's immediate reply (`success` or `ack`).
    pub async fn message(
        &self,
        handle: u64,
        body: Value,
        jsep: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut m = json!({"janus": "message", "body": body});
        if let Some(j) = jsep {
            m["jsep"] = j;
        }
        let r = self
            .post(&format!("{}/{}/{handle}", self.path, self.session), m)
            .await?;
        if let Some(e) = r["plugindata"]["data"]["error"].as_str() {
            bail!("videoroom error: {e}");
        }
        Ok(r)
    }

    async fn trickle_done(&self, handle: u64) -> anyhow::Result<()> {
        self.post(
            &format!("{}/{}/{handle}", self.path, self.session),
            json!({"janus": "trickle", "candidate": {"completed": true}}),
        )
        .await?;
        Ok(())
    }

    /// Creates a videoroom room for `publishers` publishers of VP8 (and Opus).
    pub async fn create_room(&self, room: u64, publishers: usize) -> anyhow::Result<()> {
        let (h, _rx) = self.attach().await?;
        let r = self
            .message(
                h,
                json!({"request": "create", "room": room, "publishers": publishers.max(1),
                       "videocodec": "vp8", "audiocodec": "opus", "bitrate": 0, "fir_freq": 0,
                       "notify_joining": false, "audiolevel_event": false}),
                None,
            )
            .await?;
        if r["plugindata"]["data"]["videoroom"] != "created" {
            bail!("create room: {r}");
        }
        Ok(())
    }

    /// Ends the session (every handle and PeerConnection in it).
    pub async fn destroy(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self
            .post(
                &format!("{}/{}", self.path, self.session),
                json!({"janus": "destroy"}),
            )
            .await;
    }
}

/// Waits for a plugin event on a handle matching `want`.
async fn wait_event(
    rx: &mut mpsc::UnboundedReceiver<Value>,
    what: &str,
    want: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(ev) = rx.recv().await {
            if let Some(e) = ev["plugindata"]["data"]["error"].as_str() {
                bail!("{what}: videoroom error: {e}");
            }
            if want(&ev) {
                return Ok(ev);
            }
        }
        bail!("{what}: session gone")
    })
    .await
    .with_context(|| format!("{what}: no event from Janus"))?
}

async fn wait_peer(from_peer: &mut mpsc::UnboundedReceiver<SigOut>) -> anyhow::Result<SigOut> {
    tokio::time::timeout(Duration::from_secs(10), from_peer.recv())
        .await
        .context("the bench peer made no SDP")?
        .context("the bench peer stopped")
}

/// Joins `room` as a publisher: returns its feed id once Janus answered.
pub async fn publish(
    janus: &Janus,
    room: u64,
    display: &str,
    audio: bool,
    to_peer: mpsc::UnboundedSender<SigIn>,
    mut from_peer: mpsc::UnboundedReceiver<SigOut>,
) -> anyhow::Result<u64> {
    let (h, mut rx) = janus.attach().await?;
    janus
        .message(
            h,
            json!({"request": "join", "ptype": "publisher", "room": room, "display": display}),
            None,
        )
        .await?;
    let joined = wait_event(&mut rx, "publisher join", |e| {
        e["plugindata"]["data"]["videoroom"] == "joined"
    })
    .await?;
    let feed = joined["plugindata"]["data"]["id"]
        .as_u64()
        .context("no feed id")?;
    let SigOut::Offer(sdp) = wait_peer(&mut from_peer).await? else {
        bail!("a publisher must offer");
    };
    janus
        .message(
            h,
            json!({"request": "publish", "audio": audio, "video": true, "data": false}),
            Some(json!({"type": "offer", "sdp": sdp})),
        )
        .await?;
    let ev = wait_event(&mut rx, "publish", |e| e["jsep"]["type"] == "answer").await?;
    let answer = ev["jsep"]["sdp"].as_str().unwrap_or_default().to_owned();
    let _ = to_peer.send(SigIn::Answer(answer));
    janus.trickle_done(h).await?;
    Ok(feed)
}

/// Joins `room` as a subscriber of `feeds` (one PeerConnection, one m-line per feed).
pub async fn subscribe(
    janus: &Janus,
    room: u64,
    feeds: &[u64],
    to_peer: mpsc::UnboundedSender<SigIn>,
    mut from_peer: mpsc::UnboundedReceiver<SigOut>,
) -> anyhow::Result<()> {
    let (h, mut rx) = janus.attach().await?;
    let streams: Vec<Value> = feeds.iter().map(|f| json!({"feed": f})).collect();
    janus
        .message(
            h,
            json!({"request": "join", "ptype": "subscriber", "room": room, "streams": streams}),
            None,
        )
        .await?;
    let ev = wait_event(&mut rx, "subscriber join", |e| e["jsep"]["type"] == "offer").await?;
    let offer = ev["jsep"]["sdp"].as_str().unwrap_or_default().to_owned();
    let _ = to_peer.send(SigIn::Offer(offer));
    let SigOut::Answer(sdp) = wait_peer(&mut from_peer).await? else {
        bail!("a subscriber must answer");
    };
    janus
        .message(
            h,
            json!({"request": "start"}),
            Some(json!({"type": "answer", "sdp": sdp})),
        )
        .await?;
    janus.trickle_done(h).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn janus_urls_split_into_authority_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:8088/janus").unwrap(),
            ("127.0.0.1:8088".into(), "/janus".into())
        );
        assert_eq!(
            split_url("http://localhost/").unwrap(),
            ("localhost:80".into(), "/janus".into())
        );
        assert!(split_url("https://x/janus").is_err());
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(dechunk("4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n"), "{\"a\":1}");
    }
}
