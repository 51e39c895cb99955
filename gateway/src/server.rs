//! `serve`: runs the router on a TCP listener until a shutdown signal.
//!
//! For: the HTTP server loop with graceful shutdown. Not for: binding sockets or
//! choosing addresses (the caller passes a bound listener, so tests can use port 0).

use std::future::Future;

use axum::Router;
use tokio::net::TcpListener;

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting and
/// waits for requests in flight to finish.
///
/// # Errors
/// The I/O error that stopped the server.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "gateway: listening");
    }
    // Connect info gives the rate limits each client's IP.
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
