//! `lienthong demo`: a working broker on embedded defaults. Makes (or reuses) a development PKI under
//! `certs/demo/`, opens `data/demo/`, registers the demo agencies bound to their certificates, seeds a
//! synthetic population, and prints `curl` lines that work as they are.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::broker::{Broker, StartError};
use crate::config::Config;
use crate::registry::{BillingClass, NewAgency};

/// The demo agencies: code, display name, billing class.
pub const DEMO_AGENCIES: [(&str, &str, BillingClass); 5] = [
    ("moh", "Bộ Y tế (Ministry of Health)", BillingClass::StateBudget),
    ("pccovid", "Ứng dụng PC-Covid", BillingClass::Billed),
    (
        "dvc",
        "Cổng Dịch vụ công quốc gia (National Public Service Portal)",
        BillingClass::Billed,
    ),
    (
        "sms",
        "Cổng tin nhắn tra cứu dân cư (SMS gateway)",
        BillingClass::Billed,
    ),
    ("vneid", "Ứng dụng VNEID (checkpoints)", BillingClass::StateBudget),
];

/// Where the demo keeps things.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Development PKI folder.
    pub certs_dir: PathBuf,
    /// Data folder.
    pub data_dir: PathBuf,
    /// How many synthetic citizens to seed (only into an empty store).
    pub citizens: usize,
    /// Agency listener address.
    pub agency_addr: String,
    /// Admin listener address.
    pub admin_addr: String,
    /// sled's page cache in MiB (`storage.cache_mb`); `None` keeps the config's default.
    pub cache_mb: Option<u64>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            certs_dir: "certs/demo".into(),
            data_dir: "data/demo".into(),
            citizens: 10_000,
            agency_addr: "127.0.0.1:8443".into(),
            admin_addr: "127.0.0.1:8444".into(),
            cache_mb: None,
        }
    }
}

/// The config the demo runs with: defaults pointed at the demo folders.
pub fn demo_config(opts: &DemoOptions) -> Config {
    let mut config = Config::default();
    config.agency_listener.addr = opts.agency_addr.clone();
    config.admin_listener.addr = opts.admin_addr.clone();
    let c = &opts.certs_dir;
    config.tls.ca_bundle = c.join("ca.pem");
    config.tls.server_cert = c.join("server.pem");
    config.tls.server_key = c.join("server.key");
    config.tls.crls = vec![c.join("crl.pem")];
    config.tls.admin_certs = vec![c.join("admin.pem")];
    config.storage.data_dir = opts.data_dir.clone();
    if let Some(cache_mb) = opts.cache_mb {
        config.storage.cache_mb = cache_mb;
    }
    config.dcc.dsc_cert = Some(c.join("dcc-dsc.pem"));
    config.dcc.dsc_key = Some(c.join("dcc-dsc.key"));
    config.xroad.services = vec![
        crate::config::XRoadServiceConfig {
            service: DEMO_XROAD_READ.into(),
            operation: "read".into(),
            purpose: Some("public-service-prefill".into()),
            connector: None,
        },
        crate::config::XRoadServiceConfig {
            service: "VN/GOV/lienthong/citizens/listPurposes".into(),
            operation: "list_purposes".into(),
            purpose: None,
            connector: None,
        },
    ];
    config
}

/// The demo's X-Road read service (the portal's `public-service-prefill`).
pub const DEMO_XROAD_READ: &str = "VN/GOV/lienthong/citizens/getCitizen";

/// The X-Road subsystem the demo binds to `dvc`.
pub const DEMO_DVC_XROAD: &str = "VN/GOV/000.00.00.H26/dvc";

/// Make the PKI, open the broker and register the demo agencies (idempotent).
pub async fn prepare(opts: &DemoOptions) -> Result<Arc<Broker>, StartError> {
    prepare_with(opts, |_| {}).await
}

/// As [`prepare`], with the demo config adjusted by `tweak` before the broker opens (tests use it to
/// tighten limits).
pub async fn prepare_with(
    opts: &DemoOptions,
    tweak: impl FnOnce(&mut Config),
) -> Result<Arc<Broker>, StartError> {
    let mut clients: Vec<(&str, &str)> = DEMO_AGENCIES
        .iter()
        .map(|(code, name, _)| (*code, *name))
        .collect();
    clients.push(("admin", "lienthong operators"));
    let created = crate::dev::certs::init_dir(&opts.certs_dir, &clients)
        .map_err(|e| StartError::Other(e.to_string()))?;
    for path in &created {
        tracing::info!(path = %path.display(), "created");
    }
    let mut config = demo_config(opts);
    tweak(&mut config);
    config.validate("<demo defaults>")?;
    let broker = Arc::new(Broker::open(config)?);
    // Before anything is registered or seeded: an emptied store must not be quietly re-filled.
    crate::supervisor::check_store_against_audit(&broker)
        .await
        .map_err(StartError::Other)?;
    for (code, name, billing_class) in DEMO_AGENCIES {
        register_agency(&broker, &opts.certs_dir, code, name, billing_class).await?;
    }
    let already = broker.store.count();
    if already > 0 && opts.citizens > 0 && opts.citizens != already {
        tracing::warn!(
            "{} already holds {already} citizens: --citizens {} is ignored (the demo seeds only an empty \
             store; give another --data-dir for a fresh population)",
            opts.data_dir.display(),
            opts.citizens
        );
    }
    if broker.registry.get("dvc").is_some_and(|a| a.xroad.is_none()) {
        let id =
            crate::doors::xroad::ClientId::parse(DEMO_DVC_XROAD).map_err(|e| StartError::Other(e.message))?;
        broker
            .registry
            .set_xroad("dvc", Some(id))
            .await
            .map_err(|e| StartError::Other(format!("binding dvc's X-Road client: {}", e.message)))?;
    }
    seed_demo(&broker, opts.citizens).await?;
    Ok(broker)
}

/// Register agency `code` bound to the dev certificate `certs_dir/<code>.pem`, unless it is registered.
pub async fn register_agency(
    broker: &Broker,
    certs_dir: &Path,
    code: &str,
    name: &str,
    billing_class: BillingClass,
) -> Result<(), StartError> {
    if broker.registry.get(code).is_some() {
        return Ok(());
    }
    let fingerprint = crate::identity::fingerprint_of_pem_file(&certs_dir.join(format!("{code}.pem")))?;
    broker
        .registry
        .register(NewAgency {
            code: code.into(),
            name: name.into(),
            billing_class,
            fingerprints: vec![fingerprint],
        })
        .await
        .map_err(|e| StartError::Other(format!("registering {code}: {}", e.message)))?;
    Ok(())
}

/// Copy-paste `curl` lines for the running demo.
pub fn curl_lines(certs: &Path, agency_addr: &str, admin_addr: &str) -> String {
    let c = certs.display();
    let curl = |who: &str| format!("curl --cacert {c}/ca.pem --cert {c}/{who}.pem --key {c}/{who}.key");
    let mut out = String::new();
    out.push_str("\nlienthong demo is running. Try:\n\n");
    out.push_str(&format!("  {} https://{agency_addr}/v1/whoami\n", curl("dvc")));
    out.push_str(&demo_curl_examples(&curl, agency_addr));
    out.push_str(&format!(
        "  {} -H 'X-Road-Client: {DEMO_DVC_XROAD}' -H 'X-Road-UserId: VN001090000099' -H 'X-Road-Issue: 1.001234' https://{agency_addr}/r1/{DEMO_XROAD_READ}/001090000001\n",
        curl("dvc")
    ));
    out.push_str(&format!(
        "  {} https://{admin_addr}/admin/v1/agencies\n",
        curl("admin")
    ));
    out.push_str(&format!(
        "  {} -X POST -H 'content-type: application/json' https://{admin_addr}/admin/v1/agencies/pccovid/suspend\n",
        curl("admin")
    ));
    out.push_str(&format!(
        "  {} -X POST -H 'content-type: application/json' https://{admin_addr}/admin/v1/agencies/pccovid/resume\n",
        curl("admin")
    ));
    let phone = crate::dev::population::sample_phone(0).unwrap_or_default();
    out.push_str(&format!(
        "\nSMS self-look-up (the sender's number is the one on 001090000001's record):\n\n  {} \\\n    \
         -H 'content-type: application/json' 'https://{agency_addr}/v1/sms/inbound?purpose=citizen-self-sms' \\\n    \
         -d '{{\"from\":\"{phone}\",\"text\":\"TTCD 001090000001\"}}'\n",
        curl("sms")
    ));
    out.push_str(&format!(
        "\nCheckpoints (register one, then check a citizen in):\n\n  {} \\\n    \
         -H 'content-type: application/json' 'https://{agency_addr}/v1/checkpoints?purpose=checkpoint-checkin' \\\n    \
         -d '{{\"id\":\"coopmart-cong-quynh\",\"name\":\"Co.opmart Cống Quỳnh\",\"address\":\"189C Cống Quỳnh, Quận 1\",\"kind\":\"supermarket\"}}'\n  {} \\\n    \
         -H 'content-type: application/json' 'https://{agency_addr}/v1/checkpoints/coopmart-cong-quynh/checkins?purpose=checkpoint-checkin' \\\n    \
         -d '{{\"citizen_id\":\"001090000001\"}}'\n",
        curl("vneid"),
        curl("vneid")
    ));
    out.push_str(&format!(
        "\nConsole: https://{admin_addr}/admin/console in a browser holding {c}/admin.pem and admin.key \
         (as PKCS#12: openssl pkcs12 -export -in {c}/admin.pem -inkey {c}/admin.key -out admin.p12)\n"
    ));
    out.push_str("\nStop with Ctrl-C (in-flight requests finish, the store is flushed).\n");
    out
}

/// Seed a synthetic population into an empty store, validating every record like any other write.
pub async fn seed_demo(broker: &Broker, citizens: usize) -> Result<(), crate::broker::StartError> {
    // An upstream provider's records are its own: nothing is seeded through the broker.
    if broker.store.is_remote() || !broker.store.is_empty() || citizens == 0 {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let mut batch = Vec::with_capacity(10_000);
    let mut progress = crate::progress::Progress::start("seeding citizens", Some(citizens as u64));
    for record in crate::dev::population::generate(citizens, 2021) {
        progress.advance(1);
        crate::canonical::validate_record(broker, &record).map_err(|e| {
            crate::broker::StartError::Other(format!("synthetic record invalid: {}", e.message))
        })?;
        let id = record["citizen_id"].as_str().unwrap_or_default().to_string();
        batch.push((id, record));
        if batch.len() == 10_000 {
            broker
                .store
                .put_many(std::mem::take(&mut batch))
                .await
                .map_err(|e| crate::broker::StartError::Other(e.message))?;
        }
    }
    broker
        .store
        .put_many(batch)
        .await
        .map_err(|e| crate::broker::StartError::Other(e.message))?;
    progress.finish();
    tracing::info!(
        citizens,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "seeded synthetic population"
    );
    Ok(())
}

/// Example `curl` lines for the canonical API and connectors, given a `curl` prefix for an agency.
pub fn demo_curl_examples(curl: &dyn Fn(&str) -> String, agency_addr: &str) -> String {
    let a = agency_addr;
    [
        format!("{} 'https://{a}/v1/citizens/001090000001?purpose=public-service-prefill'", curl("dvc")),
        format!("{} 'https://{a}/v1/citizens/001090000001?purpose=covid-qr-status'", curl("pccovid")),
        format!(
            "{} -H 'content-type: application/json' --data-binary @connectors/examples/pccovid-qr-status.json https://{a}/connectors/pccovid/v1/qr-status",
            curl("pccovid")
        ),
        format!(
            "{} -H 'content-type: text/xml' --data-binary @connectors/examples/dvc-tra-cuu.xml https://{a}/connectors/dvc/v1/TraCuuThongTinCongDan",
            curl("dvc")
        ),
        format!(
            "{} -H 'content-type: application/fhir+json' --data-binary @connectors/examples/moh-bundle.json https://{a}/connectors/moh/v1/Immunization",
            curl("moh")
        ),
    ]
    .iter()
    .map(|line| format!("  {line}\n"))
    .collect()
}
