//! What the example does, shared with the crate's test that runs it against a node it starts:
//! `tasks` concurrent tasks on the tokio runtime, each writing its own keys with `w=quorum` and
//! reading each back with `r=quorum`.

use std::collections::BTreeMap;

use dynacore_client::{Client, ClientError, Quorum, ReadRepair};

/// The outcome: how many values were read back as written, and every mismatch or error.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Values read back exactly as written.
    pub matched: usize,
    /// `key → what went wrong`, for every other key.
    pub failures: BTreeMap<String, String>,
}

/// The value task `task` writes under its key `i` (distinct for every key and run `tag`).
fn value(tag: &str, task: usize, i: usize) -> Vec<u8> {
    format!("{tag}:{task}:{i}:{}", "x".repeat(i % 97)).into_bytes()
}

/// Runs `tasks` tasks of `keys` writes and read-backs each, all at once, on `client` clones.
///
/// # Errors
/// A task that panicked (its join error).
pub async fn write_and_read_back(
    client: &Client,
    tag: &str,
    tasks: usize,
    keys: usize,
) -> Result<Outcome, tokio::task::JoinError> {
    let mut running = tokio::task::JoinSet::new();
    for task in 0..tasks {
        let client = client.clone();
        let tag = tag.to_owned();
        running.spawn(async move {
            let mut results = Vec::with_capacity(keys);
            for i in 0..keys {
                let key = format!("{tag}:task{task}:key{i}");
                let want = value(&tag, task, i);
                let result: Result<Option<Vec<u8>>, ClientError> = async {
                    client
                        .consistent_put(key.as_bytes(), &want, Quorum::Quorum)
                        .await?;
                    let got = client
                        .consistent_get(key.as_bytes(), Quorum::Quorum, ReadRepair::Default)
                        .await?;
                    Ok(got.map(|v| v.value))
                }
                .await;
                results.push((key, want, result));
            }
            results
        });
    }
    let mut outcome = Outcome::default();
    while let Some(done) = running.join_next().await {
        for (key, want, result) in done? {
            match result {
                Ok(Some(got)) if got == want => outcome.matched += 1,
                Ok(Some(got)) => {
                    let got = String::from_utf8_lossy(&got).into_owned();
                    outcome.failures.insert(key, format!("read back {got:?}"));
                }
                Ok(None) => {
                    outcome.failures.insert(key, "not found".to_owned());
                }
                Err(e) => {
                    outcome.failures.insert(key, e.to_string());
                }
            }
        }
    }
    Ok(outcome)
}
