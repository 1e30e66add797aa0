//! End-to-end tests of the web console (issue 5) in headless Chromium.

mod common;
mod fixtures;

use std::path::PathBuf;

use common::Berth;
use common::webdriver::Browser;

fn screenshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots")
}

#[tokio::test]
async fn harness_healthz() {
    let berth = Berth::start();
    let browser = Browser::start(&[&berth.ca_path()]).await;
    browser.goto(&format!("{}/healthz", berth.url())).await;
    assert_eq!(browser.body_text().await.trim(), "ok");
    let p = browser.screenshot_to(&screenshot_dir(), "healthz").await;
    eprintln!("{}", p.display());
}
