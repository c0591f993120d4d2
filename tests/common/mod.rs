//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
}

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh temporary directory, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "portcullis-test-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `portcullis replay --json` and returns (decisions, summary).
pub fn replay_json(args: &[&str]) -> (Vec<serde_json::Value>, serde_json::Value) {
    let out = bin()
        .arg("replay")
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "replay failed: {}", stderr(&out));
    let mut decisions = Vec::new();
    let mut summary = serde_json::Value::Null;
    for line in stdout(&out).lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
        match v["type"].as_str() {
            Some("decision") => decisions.push(v),
            Some("summary") => summary = v["summary"].clone(),
            other => panic!("unexpected line type {other:?}"),
        }
    }
    (decisions, summary)
}

/// The (jail, target, count, time) of each decision, for exact comparison.
pub fn decision_keys(ds: &[serde_json::Value]) -> Vec<(String, String, u64, String)> {
    let mut v: Vec<_> = ds
        .iter()
        .map(|d| {
            (
                d["jail"].as_str().unwrap().to_string(),
                d["target"].as_str().unwrap().to_string(),
                d["count"].as_u64().unwrap(),
                d["time"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}
