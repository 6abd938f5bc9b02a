//! The operator console end to end in headless Chromium (Debian's `chromium`, installed by
//! `scripts/install-deps.sh`): the browser presents the admin client certificate from an NSS database
//! (picked by the per-run profile's `auto_select_certificate` site setting: nothing is written outside
//! the test's temporary folder), loads the page at 1280×800, clicks Suspend and Resume through the
//! DevTools protocol, and saves a screenshot to `target/console.png`.
//!
//! This test fails (it does not skip) when chromium, certutil or pk12util is missing: CI installs them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::TestBroker;
use serde_json::{json, Value};

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} ({e}); run scripts/install-deps.sh"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn require(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not installed; the console test needs it (scripts/install-deps.sh installs chromium and libnss3-tools)"
    );
}

/// An NSS database in a fresh HOME holding the admin certificate and key, trusting the dev CA.
fn nss_home(dir: &Path, certs: &Path) -> PathBuf {
    let home = dir.join("home");
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db).unwrap();
    let sql = format!("sql:{}", db.display());
    run(Command::new("certutil").args(["-N", "-d", &sql, "--empty-password"]));
    let p12 = dir.join("admin.p12");
    run(Command::new("openssl").args([
        "pkcs12",
        "-export",
        "-in",
        certs.join("admin.pem").to_str().unwrap(),
        "-inkey",
        certs.join("admin.key").to_str().unwrap(),
        "-out",
        p12.to_str().unwrap(),
        "-passout",
        "pass:",
        "-name",
        "lienthong-admin",
    ]));
    run(Command::new("pk12util").args(["-i", p12.to_str().unwrap(), "-d", &sql, "-W", ""]));
    run(Command::new("certutil").args([
        "-A",
        "-d",
        &sql,
        "-n",
        "lienthong-dev-ca",
        "-t",
        "C,,",
        "-i",
        certs.join("ca.pem").to_str().unwrap(),
    ]));
    home
}

/// A fresh Chromium profile that presents the admin certificate to `origin` without asking: the
/// "remember this choice" site setting, written into the profile's `Preferences` before the browser
/// starts (a managed policy would need a file under `/etc`).
fn profile_selecting_certificate(dir: &Path, origin: &str) -> PathBuf {
    let profile = dir.join("profile");
    std::fs::create_dir_all(profile.join("Default")).unwrap();
    let filter = json!({ "ISSUER": { "CN": "lienthong development CA" } });
    let prefs = json!({ "profile": { "content_settings": { "exceptions": { "auto_select_certificate": {
        format!("{origin},*"): { "setting": { "filters": [filter] } }
    } } } } });
    std::fs::write(profile.join("Default/Preferences"), prefs.to_string()).unwrap();
    profile
}

/// A minimal DevTools protocol client over `--remote-debugging-pipe` (NUL-terminated JSON on fds 3 and
/// 4, given to Chromium through two FIFOs by the shell, so no unsafe fd juggling is needed here).
struct Browser {
    child: Child,
    to: std::fs::File,
    from: BufReader<std::fs::File>,
    next_id: u64,
    session: Option<String>,
}

impl Browser {
    fn launch(dir: &Path, home: &Path, profile: &Path) -> Self {
        let input = dir.join("cdp-in");
        let output = dir.join("cdp-out");
        run(Command::new("mkfifo").arg(&input).arg(&output));
        let script = format!(
            "exec chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
             --disable-background-networking --disable-component-update --disable-sync \
             --disable-dev-shm-usage --window-size=1280,800 --user-data-dir='{}' \
             --remote-debugging-pipe about:blank 3<'{}' 4>'{}'",
            profile.display(),
            input.display(),
            output.display()
        );
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .env("HOME", home)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("chromium.log")).unwrap())
            .spawn()
            .expect("start chromium");
        // Same order as the shell opens them, so neither side blocks forever.
        let to = std::fs::OpenOptions::new().write(true).open(&input).unwrap();
        let from = BufReader::new(std::fs::File::open(&output).unwrap());
        Self {
            child,
            to,
            from,
            next_id: 0,
            session: None,
        }
    }

    fn read_message(&mut self) -> Value {
        let mut buf = Vec::new();
        let n = self.from.read_until(0, &mut buf).unwrap();
        assert!(n > 0, "chromium closed the DevTools pipe");
        buf.pop();
        serde_json::from_slice(&buf).unwrap()
    }

    /// Send a command and wait for its answer (events seen meanwhile are dropped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        self.to.write_all(msg.to_string().as_bytes()).unwrap();
        self.to.write_all(b"\0").unwrap();
        loop {
            let m = self.read_message();
            if m["id"] == id {
                assert!(m.get("error").is_none(), "{method}: {m}");
                return m["result"].clone();
            }
        }
    }

    /// Run `action` and wait for the next page load it causes.
    fn until_loaded(&mut self, action: impl FnOnce(&mut Self)) {
        action(self);
        loop {
            if self.read_message()["method"] == "Page.loadEventFired" {
                return;
            }
        }
    }

    fn open_page(&mut self) {
        let target = self.call("Target.createTarget", json!({ "url": "about:blank" }));
        let attached = self.call(
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        );
        self.session = attached["sessionId"].as_str().map(str::to_string);
        self.call("Page.enable", json!({}));
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": false }),
        );
    }

    fn navigate(&mut self, url: &str) {
        self.until_loaded(|b| {
            let r = b.call("Page.navigate", json!({ "url": url }));
            assert!(r.get("errorText").is_none(), "navigating to {url}: {r}");
        });
    }

    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        );
        assert!(r.get("exceptionDetails").is_none(), "{expression}: {r}");
        r["result"]["value"].clone()
    }

    fn dom(&mut self) -> String {
        self.eval("document.documentElement.outerHTML")
            .as_str()
            .unwrap()
            .to_string()
    }

    fn click(&mut self, selector: &str) {
        let js = format!("document.querySelector({}).click()", json!(selector));
        self.until_loaded(|b| {
            b.eval(&js);
        });
    }

    fn screenshot(&mut self) -> Vec<u8> {
        let r = self.call(
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": true }),
        );
        base64_decode(r["data"].as_str().unwrap())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|c| *c != b'=' && !c.is_ascii_whitespace()) {
        let v = ALPHABET.iter().position(|a| *a == c).expect("base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn target_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp.
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_headless_chromium() {
    for tool in ["chromium", "certutil", "pk12util", "openssl", "mkfifo"] {
        require(tool);
    }
    let b = TestBroker::start().await;
    // A plan for dvc, so its quota use is drawn against limits.
    b.set_plan(
        "dvc",
        json!({ "public-service-prefill": { "per_day": 50, "per_month": 100 } }),
    )
    .await;
    // Some traffic for the audit table: a served read and a refused one.
    let r = b
        .get("dvc", "/v1/citizens/001090000001?purpose=public-service-prefill")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = b
        .get(
            "pccovid",
            "/v1/citizens/001090000001?purpose=public-service-prefill",
        )
        .await;
    assert_eq!(r.status, 403);

    let work = tempfile::tempdir().unwrap();
    let home = nss_home(work.path(), &b.certs_dir());
    let origin = format!("https://127.0.0.1:{}", b.admin.port());
    let profile = profile_selecting_certificate(work.path(), &origin);
    let url = format!("{origin}/admin/console");
    let shot = target_dir().join("console.png");
    let dir = work.path().to_path_buf();

    let driven = tokio::task::spawn_blocking(move || {
        let mut browser = Browser::launch(&dir, &home, &profile);
        browser.open_page();
        browser.navigate(&url);
        let first = browser.dom();
        // Nothing clipped or scrolled sideways at 1280 px: the widest element fits the window.
        let page_width = browser.eval("document.documentElement.scrollWidth");

        browser.click("#agency-pccovid button.suspend");
        let suspended = browser.dom();
        let png = browser.screenshot();

        browser.navigate(&format!("{url}?agency=dvc"));
        let filtered = browser.dom();
        let dvc_rows = browser.eval(
            "Array.from(document.querySelectorAll('#audit tbody tr')).map(r => r.children[2].textContent)",
        );

        browser.click("#agency-pccovid button.resume");
        let resumed = browser.dom();
        (first, page_width, suspended, png, filtered, dvc_rows, resumed)
    });
    let (first, page_width, suspended, png, filtered, dvc_rows, resumed) =
        tokio::time::timeout(Duration::from_secs(120), driven)
            .await
            .unwrap_or_else(|_| {
                let log = std::fs::read_to_string(work.path().join("chromium.log")).unwrap_or_default();
                panic!("chromium did not finish in time; its log:\n{log}")
            })
            .unwrap();

    // The page as first loaded: every section, the agencies, a verified chain, masked citizen IDs.
    for id in ["agencies", "quota", "billing", "audit", "chain"] {
        assert!(first.contains(&format!("id=\"{id}\"")), "section {id} missing");
    }
    for code in ["moh", "pccovid", "dvc"] {
        assert!(
            first.contains(&format!("id=\"agency-{code}\" data-status=\"active\"")),
            "{code} not listed as active"
        );
    }
    assert!(first.contains("audit chain verified"), "{first}");
    assert!(first.contains("001*******01"), "masked citizen ID expected");
    assert!(
        !first.contains("001090000001"),
        "a citizen ID in the clear on the console"
    );
    assert!(first.contains("data-js=\"ready\""), "console.js did not run");
    assert!(
        page_width.as_u64().is_some_and(|w| w <= 1280),
        "the console is {page_width} px wide in a 1280 px window"
    );
    // Quota use and billing for the month: one served prefill read at 1,000 VND; the refusal is free.
    assert!(
        first.contains("data-agency=\"dvc\" data-purpose=\"public-service-prefill\""),
        "no quota bar for dvc"
    );
    assert!(first.contains("title=\"1 of 100\""), "no monthly bar for dvc");
    assert!(first.contains("title=\"1 of 50\""), "no daily bar for dvc");
    assert!(
        first.contains("id=\"billing-total\">1000<"),
        "billing total should be 1000 VND"
    );

    // Suspend went through the registry: the page, the API and the audit trail agree.
    assert!(
        suspended.contains("id=\"agency-pccovid\" data-status=\"suspended\""),
        "{suspended}"
    );
    assert!(suspended.contains("id=\"notice\""), "no notice after the action");
    // (checked after the browser resumed it again below; here via the trail)
    let ops = b.admin_operations().await;
    assert!(ops.iter().any(|op| op == "admin:suspend"), "{ops:?}");
    assert!(ops.iter().any(|op| op == "admin:resume"), "{ops:?}");

    // The filter form narrows the table to one agency.
    assert!(
        filtered.contains("<option value=\"dvc\" selected"),
        "filter not kept"
    );
    let agencies: Vec<&str> = dvc_rows
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(!agencies.is_empty());
    assert!(agencies.iter().all(|a| *a == "dvc"), "{agencies:?}");

    // Resumed: served again.
    assert!(resumed.contains("id=\"agency-pccovid\" data-status=\"active\""));
    let r = b.get("pccovid", "/v1/whoami").await;
    assert_eq!(r.status, 200, "{}", r.text());

    // The screenshot, kept as a CI artifact.
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(png.len() > 10_000, "suspiciously small screenshot");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    std::fs::write(&shot, &png).unwrap();
    let mut header = [0u8; 8];
    std::fs::File::open(&shot)
        .unwrap()
        .read_exact(&mut header)
        .unwrap();
    assert_eq!(&header[1..4], b"PNG");
}
