//! The tokio client against a real node started in this process (free loopback ports, data in a
//! disk-backed temporary directory): 1,000 concurrent tasks on a multi-thread runtime share one
//! client, write their own keys with quorums and read every one back; the client is `Send +
//! Sync`, refuses bad arguments before sending, and types the server's errors. Every wait is
//! bounded.

#[path = "../examples/tokio_app/workload.rs"]
mod workload;

use std::net::SocketAddr;
use std::time::Duration;

use dynacore_client::{Client, ClientError, ClientOptions, Quorum, ReadRepair, WriteOptions};
use dynacore_net::node::{self, NodeConfig};

fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>() {}

#[test]
fn a_thousand_tokio_tasks_write_and_read_back_their_own_keys() {
    assert_send_sync_clone::<Client>();
    let dir = tempfile::Builder::new()
        .prefix("dynacore-client-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir");
    let config = NodeConfig {
        data_dir: dir.path().join("data"),
        listen: "127.0.0.1:0".parse().expect("addr"),
        http: "127.0.0.1:0".parse().expect("addr"),
        cores: Some(2),
        pin: false,
        ..NodeConfig::default()
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let node = std::thread::spawn(move || {
        node::run(config, |ready| {
            let _ = tx.send(ready.listen);
        })
    });
    let seed: SocketAddr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the node started");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let options = ClientOptions {
            timeout: Duration::from_secs(20),
            ..ClientOptions::default()
        };
        let client = tokio::time::timeout(
            Duration::from_secs(30),
            Client::connect_with(&[seed], options),
        )
        .await
        .expect("connects in time")
        .expect("connect");
        assert_eq!(client.cluster().nodes.len(), 1);
        assert_eq!(client.cluster().nodes[0].shards, 2);

        let outcome = tokio::time::timeout(
            Duration::from_secs(240),
            workload::write_and_read_back(&client, "test", 1_000, 3),
        )
        .await
        .expect("done in time")
        .expect("no task panicked");
        assert!(outcome.failures.is_empty(), "{:?}", outcome.failures);
        assert_eq!(outcome.matched, 3_000);

        // The API as the glommio client has it: versions, conditions, deletes, TTLs, errors.
        let v1 = client.put(b"tokio:k", b"one").await.expect("put");
        let v2 = client
            .put_if(b"tokio:k", b"two", &v1)
            .await
            .expect("put_if");
        match client.put_if(b"tokio:k", b"stale", &v1).await {
            Err(ClientError::ConditionFailed { current }) => assert_eq!(current, v2),
            other => panic!("expected a failed condition, got {other:?}"),
        }
        let siblings = client
            .get_siblings(b"tokio:k", Quorum::All)
            .await
            .expect("siblings")
            .expect("found");
        assert_eq!(siblings.values, vec![b"two".to_vec()]);
        let ttl = WriteOptions {
            ttl: Some(Duration::from_secs(3600)),
            ..WriteOptions::default()
        };
        client
            .put_with(b"tokio:ttl", b"t", &ttl)
            .await
            .expect("ttl put");
        client.delete(b"tokio:k").await.expect("delete");
        assert_eq!(
            client
                .consistent_get(b"tokio:k", Quorum::All, ReadRepair::Blocking)
                .await
                .expect("get"),
            None
        );
        assert!(matches!(
            client.put(b"", b"x").await,
            Err(ClientError::InvalidArgument(_))
        ));
        assert!(matches!(
            client.consistent_put(b"k", b"x", Quorum::Count(2)).await,
            Err(ClientError::InvalidArgument(_))
        ));
        client.ping(seed).await.expect("ping");
        client.refresh_topology().await.expect("refresh");
        // A client of nothing fails at once, with the address it tried.
        match Client::connect(&["127.0.0.1:1".parse().expect("addr")]).await {
            Err(ClientError::Connect { addr, .. }) => assert_eq!(addr.port(), 1),
            other => panic!("expected a connect error, got {other:?}"),
        }
        assert!(matches!(
            Client::connect(&[]).await,
            Err(ClientError::InvalidArgument(_))
        ));
    });
    drop(runtime);

    // Stop the node (its handler takes this process's SIGTERM) and wait for it.
    let me = std::process::id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &me])
        .status();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(node.join());
    });
    let stopped = done_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the node stops");
    assert!(matches!(stopped, Ok(Ok(()))), "{stopped:?}");
}
