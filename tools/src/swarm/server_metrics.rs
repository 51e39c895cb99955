//! The server-side figures the load tool prints next to its own: read from the
//! gateway's `GET /metrics` (Prometheus text) at the end of a run.

/// What the swarm reads from the server.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerFigures {
    pub tick_p50_ms: Option<f64>,
    pub tick_p99_ms: Option<f64>,
    pub tick_max_ms: Option<f64>,
    pub time_dilation: Option<f64>,
    pub connected_clients: Option<f64>,
    pub entities: Option<f64>,
    /// Datagram arrival to the start of the tick that applies the command.
    pub command_latency_p50_ms: Option<f64>,
    pub command_latency_p99_ms: Option<f64>,
    pub command_latency_max_ms: Option<f64>,
    /// Authenticated UDP packets since the server started (counters).
    pub udp_packets_in: Option<f64>,
    pub udp_packets_out: Option<f64>,
    /// Datagrams the kernel dropped at the server's socket (counter).
    pub udp_kernel_dropped: Option<f64>,
    /// Of the packets out, keepalives (counter).
    pub udp_keepalives_out: Option<f64>,
}

impl ServerFigures {
    /// Picks the figures out of a Prometheus text body; absent series stay `None`.
    pub fn parse(text: &str) -> ServerFigures {
        let value = |series: &str| -> Option<f64> {
            text.lines().find_map(|line| {
                line.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
        };
        let ms = |v: Option<f64>| v.map(|s| s * 1000.0);
        ServerFigures {
            tick_p50_ms: ms(value("warpcore_tick_seconds{quantile=\"0.5\"}")),
            tick_p99_ms: ms(value("warpcore_tick_seconds{quantile=\"0.99\"}")),
            tick_max_ms: ms(value("warpcore_tick_seconds{quantile=\"1\"}")),
            time_dilation: value("warpcore_time_dilation"),
            connected_clients: value("warpcore_connected_clients"),
            entities: value("warpcore_entities"),
            command_latency_p50_ms: ms(value("warpcore_command_latency_seconds{quantile=\"0.5\"}")),
            command_latency_p99_ms: ms(value(
                "warpcore_command_latency_seconds{quantile=\"0.99\"}",
            )),
            command_latency_max_ms: ms(value("warpcore_command_latency_seconds{quantile=\"1\"}")),
            udp_packets_in: value("warpcore_udp_packets_total{dir=\"in\"}"),
            udp_packets_out: value("warpcore_udp_packets_total{dir=\"out\"}"),
            udp_kernel_dropped: value("warpcore_udp_kernel_dropped_total"),
            udp_keepalives_out: value("warpcore_udp_keepalives_total{dir=\"out\"}"),
        }
    }

    /// The lines `warpcore-swarm` prints.
    pub fn summary(&self) -> String {
        let f = |v: Option<f64>| v.map_or("?".to_owned(), |v| format!("{v:.3}"));
        format!(
            "server tick            p50={}ms p99={}ms max={}ms\nserver command latency p50={}ms p99={}ms max={}ms\nserver time dilation={} connected clients={} entities={}",
            f(self.tick_p50_ms),
            f(self.tick_p99_ms),
            f(self.tick_max_ms),
            f(self.command_latency_p50_ms),
            f(self.command_latency_p99_ms),
            f(self.command_latency_max_ms),
            f(self.time_dilation),
            f(self.connected_clients),
            f(self.entities),
        )
    }

    /// Server UDP datagrams per second between an `earlier` reading and this one,
    /// `elapsed_s` apart: packets in and out, and datagrams the kernel dropped at the
    /// server's socket and keepalives sent (0 from a server without those series).
    pub fn packets_per_s_since(
        &self,
        earlier: &ServerFigures,
        elapsed_s: f64,
    ) -> Option<PacketRates> {
        if elapsed_s <= 0.0 {
            return None;
        }
        let rate = |now: Option<f64>, then: Option<f64>| Some((now? - then?).max(0.0) / elapsed_s);
        Some(PacketRates {
            inbound: rate(self.udp_packets_in, earlier.udp_packets_in)?,
            outbound: rate(self.udp_packets_out, earlier.udp_packets_out)?,
            kernel_dropped: rate(self.udp_kernel_dropped, earlier.udp_kernel_dropped)
                .unwrap_or(0.0),
            keepalives_out: rate(self.udp_keepalives_out, earlier.udp_keepalives_out)
                .unwrap_or(0.0),
        })
    }
}

/// The server's UDP datagrams per second over a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PacketRates {
    pub inbound: f64,
    pub outbound: f64,
    /// Dropped by the kernel at the server's socket (its receive buffer was full).
    pub kernel_dropped: f64,
    /// Of `outbound`, keepalives.
    pub keepalives_out: f64,
}

impl PacketRates {
    /// The line `warpcore-swarm` prints.
    pub fn summary(&self) -> String {
        format!(
            "server udp packets/s   in={:.0} out={:.0} keepalives-out={:.0} kernel-dropped={:.0} (connect and flight)",
            self.inbound, self.outbound, self.keepalives_out, self.kernel_dropped
        )
    }
}

/// Fetches and parses `{http_base}/metrics`.
///
/// # Errors
/// The request failed or did not answer 200.
pub async fn fetch(http: &reqwest::Client, http_base: &str) -> anyhow::Result<ServerFigures> {
    let url = format!("{}/metrics", http_base.trim_end_matches('/'));
    let response = http.get(&url).send().await?;
    anyhow::ensure!(
        response.status().is_success(),
        "GET {url} answered {}",
        response.status()
    );
    Ok(ServerFigures::parse(&response.text().await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_series_it_knows() {
        let text = "# TYPE warpcore_tick_seconds summary\n\
                    warpcore_tick_seconds{quantile=\"0.5\"} 0.0005\n\
                    warpcore_tick_seconds{quantile=\"0.99\"} 0.002\n\
                    warpcore_tick_seconds{quantile=\"1\"} 0.004\n\
                    warpcore_time_dilation 0.75\n\
                    warpcore_connected_clients 200\n\
                    warpcore_command_latency_seconds{quantile=\"0.99\"} 0.03\n\
                    warpcore_udp_packets_total{dir=\"in\"} 1000\n\
                    warpcore_udp_packets_total{dir=\"out\"} 3000\n";
        let f = ServerFigures::parse(text);
        assert_eq!(f.tick_p50_ms, Some(0.5));
        assert_eq!(f.tick_p99_ms, Some(2.0));
        assert_eq!(f.tick_max_ms, Some(4.0));
        assert_eq!(f.time_dilation, Some(0.75));
        assert_eq!(f.connected_clients, Some(200.0));
        assert_eq!(f.entities, None);
        assert_eq!(f.command_latency_p99_ms, Some(30.0));
        assert_eq!(f.command_latency_p50_ms, None);
        let earlier = ServerFigures {
            udp_packets_in: Some(400.0),
            udp_packets_out: Some(1000.0),
            ..ServerFigures::default()
        };
        let rates = PacketRates {
            inbound: 300.0,
            outbound: 1000.0,
            kernel_dropped: 0.0,
            keepalives_out: 0.0,
        };
        assert_eq!(f.packets_per_s_since(&earlier, 2.0), Some(rates));
        assert_eq!(f.packets_per_s_since(&ServerFigures::default(), 2.0), None);
        let dropping = ServerFigures::parse(&format!(
            "{text}warpcore_udp_kernel_dropped_total 900\nwarpcore_udp_keepalives_total{{dir=\"out\"}} 240\n"
        ));
        let earlier = ServerFigures {
            udp_kernel_dropped: Some(100.0),
            udp_keepalives_out: Some(40.0),
            ..earlier
        };
        assert_eq!(
            dropping
                .packets_per_s_since(&earlier, 2.0)
                .map(|r| r.kernel_dropped),
            Some(400.0)
        );
        assert_eq!(
            dropping
                .packets_per_s_since(&earlier, 2.0)
                .unwrap()
                .summary(),
            "server udp packets/s   in=300 out=1000 keepalives-out=100 kernel-dropped=400 (connect and flight)"
        );
    }
}
