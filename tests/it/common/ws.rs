//! A WebSocket client for `/ws/system`.

use std::time::Duration;

/// A WebSocket client for `/ws/system` that parses every text message.
pub struct WsClient {
    pub stream: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
}

impl WsClient {
    pub async fn connect(url: &str) -> WsClient {
        let (stream, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        WsClient { stream }
    }

    /// The next JSON message (pings are answered and skipped), or `None`
    /// when the connection ended or `limit` passed.
    pub async fn next_json(&mut self, limit: Duration) -> Option<serde_json::Value> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.stream.next()).await.ok()??;
            match msg.ok()? {
                Message::Text(t) => return Some(serde_json::from_str(&t).unwrap()),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// Reads until a message satisfies `pred`; panics after `limit`.
    pub async fn wait_for(
        &mut self,
        what: &str,
        limit: Duration,
        mut pred: impl FnMut(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_json(left).await {
                Some(m) if pred(&m) => return m,
                Some(_) => continue,
                None => panic!("no message matching {what} within {limit:?}"),
            }
        }
    }
}
