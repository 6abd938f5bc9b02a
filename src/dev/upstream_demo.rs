//! `lienthong demo --upstream`: a provider (a lienthong serving its own store, `demo --provider`) and a
//! front broker in upstream provider mode in front of it, wired together with the development PKI:
//! agencies → front broker (policy, quota, audit) → provider (the population database).
//!
//! The provider's side of the wiring: the front broker is registered there as agency `front`, with purpose
//! `population-proxy` (`providers/provider-side/population-proxy.toml`, appended to the catalogue) and a
//! SOAP connector for the QCVN 109 dialect (`providers/provider-side/population-soap.toml`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::broker::{Broker, StartError};
use crate::config::{Config, StoreBackend};
use crate::dev::demo::DemoOptions;
use crate::registry::BillingClass;
use crate::upstream::UpstreamConfig;

/// The front broker's agency code at the provider (and its client certificate's name).
pub const FRONT_AGENCY: &str = "front";

/// The provider-side purpose, appended to the provider's catalogue.
pub const PROVIDER_PURPOSE: &str = include_str!("../../providers/provider-side/population-proxy.toml");

/// The provider-side SOAP connector the `qcvn109-soap` provider file talks to.
pub const PROVIDER_SOAP_CONNECTOR: &str = include_str!("../../providers/provider-side/population-soap.toml");

fn other(e: impl std::fmt::Display) -> StartError {
    StartError::Other(e.to_string())
}

/// Write the provider's catalogue (shipped purposes + `population-proxy`) and connector folder (shipped
/// connectors + the SOAP one) under `dir`; point `config` at them.
fn provider_catalogue(dir: &Path, config: &mut Config) -> Result<(), StartError> {
    let connectors = dir.join("connectors");
    std::fs::create_dir_all(&connectors).map_err(other)?;
    let purposes = dir.join("purposes.toml");
    std::fs::write(
        &purposes,
        format!("{}\n{PROVIDER_PURPOSE}", crate::policy::EMBEDDED_PURPOSES),
    )
    .map_err(other)?;
    for (file, text) in crate::connector::EMBEDDED {
        let name = Path::new(file).file_name().unwrap_or_default();
        std::fs::write(connectors.join(name), text).map_err(other)?;
    }
    std::fs::write(connectors.join("population-soap.toml"), PROVIDER_SOAP_CONNECTOR).map_err(other)?;
    config.catalogue.purposes = Some(purposes);
    config.catalogue.connectors_dir = Some(connectors);
    Ok(())
}

/// The provider: the demo broker (agencies, population) with the front broker registered as an agency
/// allowed `population-proxy`.
pub async fn prepare_provider(opts: &DemoOptions) -> Result<Arc<Broker>, StartError> {
    crate::dev::certs::init_dir(&opts.certs_dir, &[(FRONT_AGENCY, "lienthong front broker")])
        .map_err(other)?;
    let catalogue_dir = opts.data_dir.join("catalogue");
    let mut written = Ok(());
    let broker = crate::dev::demo::prepare_with(opts, |config| {
        written = provider_catalogue(&catalogue_dir, config);
    })
    .await?;
    written?;
    crate::dev::demo::register_agency(
        &broker,
        &opts.certs_dir,
        FRONT_AGENCY,
        "lienthong front broker (upstream provider mode)",
        BillingClass::StateBudget,
    )
    .await?;
    Ok(broker)
}

/// The `[store.upstream]` of a front broker in front of the provider at `provider_addr`, with the dev
/// PKI under `certs` and the shipped provider file `provider` (`lienthong-rest.toml`, `qcvn109-soap.toml`).
pub fn front_store(certs: &Path, provider_addr: &str, provider: &str) -> UpstreamConfig {
    UpstreamConfig {
        url: format!("https://{provider_addr}"),
        provider: PathBuf::from(provider),
        ca_bundle: certs.join("ca.pem"),
        client_cert: certs.join(format!("{FRONT_AGENCY}.pem")),
        client_key: certs.join(format!("{FRONT_AGENCY}.key")),
        timeout_ms: 2_000,
        connect_timeout_ms: 1_000,
        retries: 2,
        pool_size: 32,
        breaker_failures: 5,
        breaker_open_ms: 5_000,
        probe_interval_ms: 2_000,
    }
}

/// Point `config` at an upstream provider.
pub fn use_upstream(config: &mut Config, upstream: UpstreamConfig) {
    config.store.backend = StoreBackend::Upstream;
    config.store.upstream = Some(upstream);
}

/// `curl` lines that go through the front broker to the provider, and one straight to the provider.
pub fn curl_lines(certs: &Path, front_addr: &str, provider_addr: &str, admin_addr: &str) -> String {
    let c = certs.display();
    let curl = |who: &str| format!("curl --cacert {c}/ca.pem --cert {c}/{who}.pem --key {c}/{who}.key");
    let mut out = String::from(
        "\nlienthong demo --upstream is running: agencies → front broker → provider (population database).\n\n",
    );
    out.push_str("Through the front broker (it asks the provider only for the released fields):\n\n");
    out.push_str(&crate::dev::demo::demo_curl_examples(&curl, front_addr));
    out.push_str(&format!(
        "  {} -H 'content-type: application/json' 'https://{front_addr}/v1/citizens/001090000001/vaccinations?purpose=vaccination-sync' \\\n    -d '{{\"source_record_id\":\"demo-upstream-1\",\"dose_number\":3,\"vaccine_code\":\"208\",\"vaccine_name\":\"Comirnaty\",\"date\":\"2022-01-10\"}}'\n",
        curl("moh")
    ));
    out.push_str(&format!(
        "  {} https://{admin_addr}/healthz\n  {} https://{admin_addr}/metrics | grep upstream\n",
        curl("admin"),
        curl("admin")
    ));
    out.push_str("\nStraight to the provider, as the front broker (purpose population-proxy):\n\n");
    out.push_str(&format!(
        "  {} 'https://{provider_addr}/v1/citizens/001090000001?purpose=population-proxy&fields=full_name,birth_date'\n",
        curl(FRONT_AGENCY)
    ));
    out.push_str("\nStop with Ctrl-C (the provider stops with it).\n");
    out
}
