//! `dynacore snapshot` of a live node restores into a working node: the snapshot is taken
//! while a writer runs, the node is stopped, the snapshot directory copied as a new data
//! directory, and the node started on it holds every write acknowledged before the snapshot
//! (large values in blob files included), none deleted before it, none written after it, keeps
//! its node id and starts a new actor epoch.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use common::{dynacore, http, start, temp_dir, wait_until, HttpResponse};

fn put_raw(addr: std::net::SocketAddr, key: &str, value: &[u8]) -> HttpResponse {
    http(
        addr,
        "PUT",
        &format!("/keys/{key}"),
        &[("Content-Type", "application/octet-stream")],
        value,
    )
}

fn get_raw(addr: std::net::SocketAddr, key: &str) -> HttpResponse {
    http(
        addr,
        "GET",
        &format!("/keys/{key}"),
        &[("Accept", "application/octet-stream")],
        b"",
    )
}

/// The value written under `k{i}`: every 25th over the value log's 64 KiB threshold.
fn value(i: usize) -> Vec<u8> {
    if i.is_multiple_of(25) {
        vec![u8::try_from(i % 251).expect("small"); 80 << 10]
    } else {
        format!("value-{i}").into_bytes()
    }
}

/// A plain copy of `from` into `to` (what an operator's `cp -a` does).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

#[test]
fn a_snapshot_of_a_live_node_restores_into_a_working_node() {
    let dir = temp_dir("snapshot");
    let node = start(&dir.path().join("live"), 2, &[]);
    for i in 0..300 {
        assert_eq!(put_raw(node.http, &format!("k{i}"), &value(i)).status, 200);
    }
    for i in (0..300).step_by(30) {
        let r = http(node.http, "DELETE", &format!("/keys/k{i}"), &[], b"");
        assert_eq!(r.status, 200);
    }
    // A writer goes on while the snapshot is taken.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (stop, acked, addr) = (stop.clone(), acked.clone(), node.http);
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 5_000 {
                assert_eq!(put_raw(addr, &format!("during{n}"), b"v").status, 200);
                n += 1;
                acked.store(n, Ordering::Relaxed);
            }
        })
    };
    wait_until("the writer is under way", || {
        acked.load(Ordering::Relaxed) > 0
    });
    let acked_before = acked.load(Ordering::Relaxed);
    let out = dynacore()
        .args([
            "snapshot",
            "--addr",
            &node.http.to_string(),
            "--name",
            "before-upgrade",
        ])
        .output()
        .expect("dynacore snapshot");
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(answer["snapshot"], "before-upgrade");
    let shards = answer["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), 2);
    let blob_files: u64 = shards.iter().filter_map(|s| s["blob_files"].as_u64()).sum();
    assert!(blob_files >= 1, "large values are in blob files: {answer}");
    let path = std::path::PathBuf::from(answer["path"].as_str().expect("path"));
    assert!(path.join("NODE").exists() && path.join("shard-1").join("MANIFEST").exists());
    // The same name again is refused; so is a name that is not one.
    let again = http(
        node.http,
        "POST",
        "/admin/snapshot?name=before-upgrade",
        &[],
        b"",
    );
    assert_eq!(again.status, 409, "{}", again.text());
    let bad = http(node.http, "POST", "/admin/snapshot?name=..%2Fx", &[], b"");
    assert_eq!(bad.status, 400, "{}", bad.text());
    // After the snapshot: not in it.
    assert_eq!(put_raw(node.http, "after", b"v").status, 200);
    let live_id =
        common::http(node.http, "GET", "/cluster", &[], b"").json()["nodes"][0]["id"].clone();
    assert!(live_id.is_string(), "{live_id}");
    let status = node.stop();
    assert!(status.success(), "{status:?}");

    // Restore: the snapshot copied as a new data directory.
    let restored_dir = dir.path().join("restored");
    copy_dir(&path, &restored_dir);
    let restored = start(&restored_dir, 2, &[]);
    let restored_id =
        common::http(restored.http, "GET", "/cluster", &[], b"").json()["nodes"][0]["id"].clone();
    assert_eq!(restored_id, live_id, "the restored node is the same node");
    for i in 0..300usize {
        let r = get_raw(restored.http, &format!("k{i}"));
        if i.is_multiple_of(30) {
            assert_eq!(r.status, 404, "k{i} was deleted before the snapshot");
        } else {
            assert_eq!(r.status, 200, "k{i}");
            assert_eq!(r.body, value(i), "k{i}");
        }
    }
    assert_eq!(get_raw(restored.http, "after").status, 404);
    // Of the writes that went on meanwhile, those acknowledged before it began are in it.
    for n in 0..acked_before {
        assert_eq!(
            get_raw(restored.http, &format!("during{n}")).status,
            200,
            "during{n} was acknowledged before the snapshot began"
        );
    }
    wait_until("the restored node logged its new actor epoch", || {
        restored
            .log_text()
            .contains("it was restored from a snapshot")
    });
    // It works: a write and a read.
    assert_eq!(put_raw(restored.http, "k1", b"new").status, 200);
    assert_eq!(get_raw(restored.http, "k1").body, b"new");
}
