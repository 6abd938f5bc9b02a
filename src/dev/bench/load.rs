//! The load generator: one task per connection for a fixed time (or paced to a rate), every latency kept
//! and every status counted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

use super::args::Scenario;
use super::workloads::{prepare, Sample};
use crate::client::{Alpn, ClientError, Connection, MtlsClient};

/// How long the load generator waits for one answer before counting an error and reconnecting.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// How the load generator connects: keep-alive through [`MtlsClient`], or a full handshake per request.
#[derive(Clone)]
pub(super) struct Clients {
    pub(super) keep_alive: MtlsClient,
    /// Resumption disabled, so that every connection is a full mTLS handshake.
    fresh: tokio_rustls::TlsConnector,
}

impl Clients {
    pub(super) fn load(certs: &Path, agency: &str, alpn: Alpn) -> Result<Self, String> {
        let read = |name: &str| std::fs::read(certs.join(name)).map_err(|e| format!("{name}: {e}"));
        let ca = read("ca.pem")?;
        let cert = read(&format!("{agency}.pem"))?;
        let key = read(&format!("{agency}.key"))?;
        let keep_alive = MtlsClient::from_pem(&ca, Some((&cert, &key)), alpn).map_err(|e| e.to_string())?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&ca) {
            roots
                .add(c.map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
        let chain = CertificateDer::pem_slice_iter(&cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| e.to_string())?;
        let mut config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| e.to_string())?;
        config.resumption = rustls::client::Resumption::disabled();
        config.alpn_protocols = match alpn {
            Alpn::Http2 => vec![b"h2".to_vec()],
            Alpn::Http1 => vec![b"http/1.1".to_vec()],
            Alpn::Both => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        };
        Ok(Self {
            keep_alive,
            fresh: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    pub(super) async fn connect(&self, addr: SocketAddr, fresh: bool) -> Result<Connection, ClientError> {
        if !fresh {
            return self.keep_alive.connect(addr).await;
        }
        let tcp = TcpStream::connect(addr).await.map_err(ClientError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from("localhost").map_err(|e| ClientError::Credentials(e.to_string()))?;
        let tls = self
            .fresh
            .connect(name, tcp)
            .await
            .map_err(ClientError::Handshake)?;
        Connection::over_tls(tls).await
    }
}

/// What one load run measured.
#[derive(Debug, Default, Clone)]
pub(super) struct LoadResult {
    pub(super) latencies_us: Vec<u32>,
    pub(super) statuses: BTreeMap<u16, u64>,
    pub(super) errors: u64,
    pub(super) first_error: Option<String>,
    pub(super) elapsed: Duration,
}

impl LoadResult {
    pub(super) fn merge(&mut self, other: LoadResult) {
        self.latencies_us.extend(other.latencies_us);
        for (s, n) in other.statuses {
            *self.statuses.entry(s).or_default() += n;
        }
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// One load run: `concurrency` tasks, each with its own connection, until `duration` is over; in-flight
/// requests are let finish (they are answered, hence audited, and so counted). With `rate`, requests are
/// paced to that total rate and latency counts from the scheduled send time (no coordinated omission).
/// What one load run does.
#[derive(Debug, Clone, Copy)]
pub(super) struct Plan {
    pub(super) addr: SocketAddr,
    pub(super) scenario: Scenario,
    pub(super) concurrency: usize,
    pub(super) duration: Duration,
    pub(super) rate: Option<f64>,
}

pub(super) async fn load(clients: &Clients, sample: &Arc<Sample>, plan: Plan, run_tag: &str) -> LoadResult {
    let Plan {
        addr,
        scenario,
        concurrency,
        duration,
        rate,
    } = plan;
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(concurrency);
    for task in 0..concurrency {
        let clients = clients.clone();
        let sample = sample.clone();
        let tag = format!("{run_tag}-{task}");
        let interval = rate.map(|r| Duration::from_secs_f64(concurrency as f64 / r.max(0.001)));
        tasks.push(tokio::spawn(async move {
            let mut out = LoadResult::default();
            let mut conn: Option<Connection> = None;
            let mut n: u64 = (task as u64) << 40;
            let mut next = start
                + interval
                    .map(|i| i.mul_f64(task as f64 / concurrency as f64))
                    .unwrap_or_default();
            loop {
                if interval.is_some() {
                    if next >= deadline {
                        break;
                    }
                    tokio::time::sleep_until(next.into()).await;
                } else if Instant::now() >= deadline {
                    break;
                }
                let Some(req) = prepare(scenario.kind, &sample, n, &tag) else {
                    out.first_error = Some("no citizen in the sample fits this scenario".into());
                    break;
                };
                n += 1;
                let t0 = if interval.is_some() { next } else { Instant::now() };
                if let Some(i) = interval {
                    next += i;
                }
                let exchange = async {
                    if scenario.new_connection || conn.is_none() {
                        conn = Some(clients.connect(addr, scenario.new_connection).await?);
                    }
                    match conn.as_mut() {
                        Some(c) => c.send(req.method, &req.path, req.content_type, req.body).await,
                        None => Err(ClientError::Credentials("no connection".into())),
                    }
                };
                // A stuck server must not hang the harness: the request counts as an error instead.
                let result = match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
                };
                match result {
                    Ok(resp) => {
                        let us = t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                        out.latencies_us.push(us);
                        *out.statuses.entry(resp.status).or_default() += 1;
                    }
                    Err(e) => {
                        out.errors += 1;
                        out.first_error.get_or_insert(e);
                        conn = None;
                        // Do not spin on a refusing server.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                if scenario.new_connection {
                    conn = None;
                }
            }
            out
        }));
    }
    let mut total = LoadResult::default();
    for t in tasks {
        match t.await {
            Ok(r) => total.merge(r),
            Err(e) => {
                total.errors += 1;
                total.first_error.get_or_insert_with(|| format!("load task: {e}"));
            }
        }
    }
    total.elapsed = start.elapsed();
    total
}

/// One load run over several servers (a cluster's nodes): the plan's connections dealt round-robin, each
/// server's share run at once; one result.
pub(super) async fn load_spread(
    clients: &Clients,
    sample: &Arc<Sample>,
    plan: Plan,
    addrs: &[SocketAddr],
    run_tag: &str,
) -> LoadResult {
    if let [addr] = addrs {
        return load(clients, sample, Plan { addr: *addr, ..plan }, run_tag).await;
    }
    let mut shares = tokio::task::JoinSet::new();
    for (k, addr) in addrs.iter().enumerate() {
        let concurrency = plan.concurrency / addrs.len() + usize::from(k < plan.concurrency % addrs.len());
        if concurrency == 0 {
            continue;
        }
        let share = Plan {
            addr: *addr,
            concurrency,
            rate: plan
                .rate
                .map(|r| r * concurrency as f64 / plan.concurrency as f64),
            ..plan
        };
        let (clients, sample, tag) = (clients.clone(), sample.clone(), format!("{run_tag}n{k}"));
        shares.spawn(async move { load(&clients, &sample, share, &tag).await });
    }
    let mut total = LoadResult::default();
    while let Some(share) = shares.join_next().await {
        match share {
            Ok(r) => {
                total.elapsed = total.elapsed.max(r.elapsed);
                total.merge(r);
            }
            Err(e) => {
                total.errors += 1;
                total
                    .first_error
                    .get_or_insert_with(|| format!("load share: {e}"));
            }
        }
    }
    total
}

pub(super) fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    f64::from(sorted[rank - 1]) / 1000.0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn percentiles_pick_by_rank() {
        let v: Vec<u32> = (1..=1000).map(|x| x * 1000).collect();
        assert_eq!(percentile(&v, 0.5), 500.0);
        assert_eq!(percentile(&v, 0.99), 990.0);
        assert_eq!(percentile(&v, 0.999), 999.0);
        assert_eq!(percentile(&[7000], 0.999), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
