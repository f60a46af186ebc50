//! Signaling of bench participants with a `switchboard serve` (dev mode): a token from `/dev/token`, one
//! WebSocket per participant, SDP exchanged with the pseudo-participant `"sfu"` (docs/protocol.md).

use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::peer::{SigIn, SigOut};

/// Joins `room` as `name` and relays SDP between the WebSocket and a participant task until `out` closes.
/// Returns once joined.
pub async fn join(
    server: &client::ServerUrl,
    room: &str,
    name: &str,
    to_peer: mpsc::UnboundedSender<SigIn>,
    mut from_peer: mpsc::UnboundedReceiver<SigOut>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (token, _) = client::dev_token(server, room, name)
        .await
        .context("dev token (is the server in dev mode?)")?;
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(server.ws.as_str()),
    )
    .await
    .context("WebSocket connect timed out")?
    .context("WebSocket connect")?;
    ws.send(Message::text(
        json!({"type": "join", "token": token, "protocol": 1}).to_string(),
    ))
    .await?;
    let joined = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(m) = ws.next().await {
            let Message::Text(t) = m? else { continue };
            let v: Value = serde_json::from_str(t.as_str())?;
            match v["type"].as_str() {
                Some("joined") => return Ok(v),
                Some("error") => bail!("join refused: {}", v),
                _ => {}
            }
        }
        bail!("socket closed before joined")
    })
    .await
    .context("waiting for joined")??;
    let mode = joined["room"]["mode"].as_str().unwrap_or("");
    if mode != "sfu" {
        bail!("room {room} is in {mode:?} mode, not \"sfu\": start the server with SWITCHBOARD_ROOMS_DEFAULT_MODE=sfu");
    }
    Ok(tokio::spawn(async move {
        let mut ping = tokio::time::interval(Duration::from_secs(20));
        loop {
            tokio::select! {
                m = ws.next() => {
                    let Some(Ok(m)) = m else { break };
                    let Message::Text(t) = m else { continue };
                    let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else { continue };
                    if v["from"] != "sfu" {
                        continue;
                    }
                    let sdp = v["sdp"].as_str().unwrap_or_default().to_owned();
                    let msg = match v["type"].as_str() {
                        Some("offer") => SigIn::Offer(sdp),
                        Some("answer") => SigIn::Answer(sdp),
                        _ => continue,
                    };
                    if to_peer.send(msg).is_err() {
                        break;
                    }
                }
                o = from_peer.recv() => {
                    let Some(o) = o else { break };
                    let (kind, sdp) = match o {
                        SigOut::Offer(s) => ("offer", s),
                        SigOut::Answer(s) => ("answer", s),
                    };
                    let text = json!({"type": kind, "to": "sfu", "sdp": sdp}).to_string();
                    if ws.send(Message::text(text)).await.is_err() {
                        break;
                    }
                }
                _ = ping.tick() => {
                    if ws.send(Message::text(r#"{"type":"ping","ts":0}"#)).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = ws.send(Message::text(r#"{"type":"leave"}"#)).await;
        let _ = ws.close(None).await;
    }))
}
