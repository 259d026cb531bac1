//! The live event feed behind the status page: one task follows the store's event log and
//! broadcasts new events; each SSE client subscribes. Events are written by many paths (the
//! DHCP writer, HTTP handlers, reloads); following the log catches all of them in order.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use tokio::sync::broadcast;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::BroadcastStream;

use crate::app::App;
use crate::store::Event;

/// How often the log is polled: well below what a human notices on the page.
const POLL: Duration = Duration::from_millis(250);

pub fn channel() -> broadcast::Sender<Event> {
    broadcast::channel(4096).0
}

/// Follows the event log from its current end until `shutdown`.
pub async fn follow(app: Arc<App>, shutdown: impl std::future::Future<Output = ()>) {
    let store = app.store.clone();
    let mut last = tokio::task::spawn_blocking(move || store.recent_events(1))
        .await
        .ok()
        .and_then(Result::ok)
        .and_then(|v| v.last().map(|e| e.seq))
        .unwrap_or(0);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(POLL) => {}
        }
        if app.feed.receiver_count() == 0 {
            // Nobody watching: skip the read, but keep the position current.
            let store = app.store.clone();
            if let Ok(Ok(v)) = tokio::task::spawn_blocking(move || store.recent_events(1)).await {
                last = v.last().map_or(last, |e| e.seq);
            }
            continue;
        }
        let store = app.store.clone();
        let after = last;
        let Ok(Ok(events)) =
            tokio::task::spawn_blocking(move || store.events_since(after, 1000)).await
        else {
            continue;
        };
        for e in events {
            last = e.seq;
            let _ = app.feed.send(e);
        }
    }
}

/// `GET /api/v1/stream`: server-sent events, one `event` message per log entry. A client
/// that falls behind gets a `lagged` message and should refetch.
pub async fn stream(
    State(app): State<Arc<App>>,
) -> Sse<impl tokio_stream::Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = app.feed.subscribe();
    let stream = BroadcastStream::new(rx).map(|item| {
        Ok(match item {
            Ok(e) => SseEvent::default()
                .event("event")
                .id(e.seq.to_string())
                .json_data(&e)
                .unwrap_or_else(|_| SseEvent::default().event("lagged").data("")),
            Err(_) => SseEvent::default().event("lagged").data(""),
        })
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
