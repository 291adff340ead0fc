//! The Redis protocol's keyspace commands, over the coordinator's token scan
//! ([`coordinator::scan`]): `SCAN` (the cursor is a token), `KEYS` (every page, with a
//! warning), `DBSIZE` (a count by scanning, approximate) and `FLUSHDB` / `FLUSHALL` (every key
//! deleted; off unless the node's configuration allows it).

use std::time::Instant;

use dynacore_proto::{KeyCondition, Quorum};

use super::resp_codec::{Command, Reply};
use super::resp_data::{integer, lower, store_error, syntax_error, write};
use crate::coordinator;
use crate::core::Core;

/// The most keys `KEYS` answers; past it, the client is told to use `SCAN`.
pub const KEYS_MAX: usize = 100_000;

/// Keys a page of `KEYS`, `DBSIZE` and `FLUSHDB` asks for.
const PAGE_KEYS: usize = 1000;

/// `SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]`: the next cursor ("0": done) and a
/// page of keys.
pub async fn scan(core: &Core, args: &Command) -> Reply {
    let Some(cursor) = std::str::from_utf8(&args[1])
        .ok()
        .and_then(|c| c.parse::<u64>().ok())
    else {
        return Reply::err("invalid cursor");
    };
    let mut pattern: Option<&[u8]> = None;
    let mut count = 10usize;
    let mut strings = true;
    let mut i = 2;
    while i < args.len() {
        let Some(value) = args.get(i + 1) else {
            return syntax_error();
        };
        match args[i].to_ascii_uppercase().as_slice() {
            b"MATCH" => pattern = Some(value),
            b"COUNT" => match integer(value) {
                Some(n) if n >= 1 => count = usize::try_from(n).unwrap_or(usize::MAX),
                Some(_) => return syntax_error(),
                None => return Reply::err("value is not an integer or out of range"),
            },
            // Every value is a string.
            b"TYPE" => strings = value.eq_ignore_ascii_case(b"string"),
            _ => return syntax_error(),
        }
        i += 2;
    }
    let page = match coordinator::scan(
        core,
        cursor,
        count.min(PAGE_KEYS * 10),
        Quorum::Default,
        core.default_timeout(),
    )
    .await
    {
        Ok(p) => p,
        Err(e) => return store_error(&e),
    };
    let keys = page
        .keys
        .into_iter()
        .filter(|k| strings && pattern.is_none_or(|p| glob(p, k, false)))
        .map(Reply::Bulk)
        .collect();
    Reply::Array(vec![
        Reply::Bulk(page.next.to_string().into_bytes()),
        Reply::Array(keys),
    ])
}

/// Every live key of the cluster, page by page, through `each` (which may stop the walk by
/// answering an error).
async fn walk(
    core: &Core,
    r: Quorum,
    mut each: impl AsyncFnMut(Vec<Vec<u8>>) -> Result<(), Reply>,
) -> Result<(), Reply> {
    let mut cursor = 0;
    loop {
        let page = coordinator::scan(core, cursor, PAGE_KEYS, r, core.default_timeout())
            .await
            .map_err(|e| store_error(&e))?;
        each(page.keys).await?;
        if page.next == 0 {
            return Ok(());
        }
        cursor = page.next;
    }
}

/// `KEYS pattern`: every key matching, by scanning the whole cluster (logged: it reads every
/// key's copies from R replicas).
pub async fn keys(core: &Core, pattern: &[u8]) -> Reply {
    let started = Instant::now();
    let mut found = Vec::new();
    let walked = walk(core, Quorum::Default, async |keys| {
        found.extend(
            keys.into_iter()
                .filter(|k| glob(pattern, k, false))
                .map(Reply::Bulk),
        );
        if found.len() > KEYS_MAX {
            return Err(Reply::err(format!(
                "more than {KEYS_MAX} keys match; use SCAN to walk them page by page"
            )));
        }
        Ok(())
    })
    .await;
    tracing::warn!(
        keys = found.len(),
        ms = started.elapsed().as_millis(),
        "KEYS scanned the whole cluster (SCAN walks it page by page)"
    );
    match walked {
        Ok(()) => Reply::Array(found),
        Err(e) => e,
    }
}

/// `DBSIZE`: the live keys counted by scanning one replica of each range — approximate: a key
/// whose write has not reached that replica yet is missed, and keys change while it counts.
pub async fn dbsize(core: &Core) -> Reply {
    let mut n = 0usize;
    let walked = walk(core, Quorum::Count(1), async |keys| {
        n += keys.len();
        Ok(())
    })
    .await;
    match walked {
        Ok(()) => Reply::Integer(i64::try_from(n).unwrap_or(i64::MAX)),
        Err(e) => e,
    }
}

/// `FLUSHDB` / `FLUSHALL [ASYNC | SYNC]`: every key the scan finds deleted (a tombstone each, at
/// W), when the node's configuration allows it (`resp_flush = true`). A key written while it
/// runs may survive.
pub async fn flush(core: &Core, name: &[u8], args: &Command, allowed: bool) -> Reply {
    match args.get(1).map(|a| a.to_ascii_uppercase()).as_deref() {
        None | Some(b"ASYNC" | b"SYNC") if args.len() <= 2 => {}
        _ => return syntax_error(),
    }
    if !allowed {
        return Reply::err(format!(
            "{} is disabled on this node: it deletes every key of the cluster; set \
             resp_flush = true in the node's configuration to allow it",
            lower(name).to_uppercase()
        ));
    }
    let started = Instant::now();
    let mut deleted = 0usize;
    let walked = walk(core, Quorum::Default, async |keys| {
        let tasks: Vec<_> = keys
            .into_iter()
            .map(|key| {
                let core = core.clone();
                dynacore_runtime::spawn(async move {
                    write(&core, &key, None, None, KeyCondition::None).await
                })
            })
            .collect();
        for t in tasks {
            t.await.map_err(|e| store_error(&e))?;
            deleted += 1;
        }
        Ok(())
    })
    .await;
    tracing::warn!(
        keys = deleted,
        ms = started.elapsed().as_millis(),
        "{} deleted every key of the cluster",
        lower(name).to_uppercase()
    );
    match walked {
        Ok(()) => Reply::ok(),
        Err(e) => e,
    }
}

/// Redis's glob match (`stringmatchlen`): `*`, `?`, `[abc]`, `[^a-z]`, `\x`; case-insensitive
/// when `nocase`.
pub fn glob(pattern: &[u8], text: &[u8], nocase: bool) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was, and how much of the text it has taken.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            if pattern[p] == b'*' {
                star = Some((p, t));
                p += 1;
                continue;
            }
            if let Some(used) = one(&pattern[p..], text[t], nocase) {
                p += used;
                t += 1;
                continue;
            }
        }
        // A mismatch: the last `*` takes one more byte, or there is none to.
        match star {
            Some((sp, st)) => {
                p = sp + 1;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Whether the pattern element at the start of `pattern` (not `*`) matches `c`: the bytes it
/// takes, or `None`.
fn one(pattern: &[u8], c: u8, nocase: bool) -> Option<usize> {
    let same = |a: u8, b: u8| a == b || (nocase && a.eq_ignore_ascii_case(&b));
    match pattern[0] {
        b'?' => Some(1),
        b'\\' if pattern.len() >= 2 => same(pattern[1], c).then_some(2),
        b'[' => {
            let mut i = 1;
            let negate = pattern.get(i) == Some(&b'^');
            if negate {
                i += 1;
            }
            let mut hit = false;
            while i < pattern.len() && pattern[i] != b']' {
                if pattern[i] == b'\\' && i + 1 < pattern.len() {
                    hit |= same(pattern[i + 1], c);
                    i += 2;
                } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']'
                {
                    let (mut lo, mut hi) = (pattern[i], pattern[i + 2]);
                    if lo > hi {
                        std::mem::swap(&mut lo, &mut hi);
                    }
                    let (lc, c2) = if nocase {
                        (
                            c.to_ascii_lowercase(),
                            (lo.to_ascii_lowercase(), hi.to_ascii_lowercase()),
                        )
                    } else {
                        (c, (lo, hi))
                    };
                    hit |= lc >= c2.0 && lc <= c2.1;
                    i += 3;
                } else {
                    hit |= same(pattern[i], c);
                    i += 1;
                }
            }
            // Past the `]` (a class left open ends with the pattern, as in Redis).
            let used = (i + 1).min(pattern.len());
            (hit != negate).then_some(used)
        }
        literal => same(literal, c).then_some(1),
    }
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn glob_matches_like_redis() {
        let yes = |p: &str, t: &str| assert!(glob(p.as_bytes(), t.as_bytes(), false), "{p} {t}");
        let no = |p: &str, t: &str| assert!(!glob(p.as_bytes(), t.as_bytes(), false), "{p} {t}");
        yes("*", "");
        yes("*", "anything");
        yes("user:*", "user:1");
        no("user:*", "users:1");
        yes("h?llo", "hello");
        no("h?llo", "hllo");
        yes("h[ae]llo", "hallo");
        no("h[ae]llo", "hillo");
        yes("h[^e]llo", "hallo");
        no("h[^e]llo", "hello");
        yes("h[a-b]llo", "hbllo");
        yes("h[b-a]llo", "hallo");
        no("h[a-b]llo", "hcllo");
        yes("a\\*b", "a*b");
        no("a\\*b", "axb");
        yes("*a*b*c*", "xxaxxbxxcxx");
        no("*a*b*c*", "xxaxxcxxbxx");
        yes("a*", "a");
        no("a", "A");
        assert!(glob(b"SAVE", b"save", true));
        assert!(glob(b"app*", b"appendonly", true));
        // Many stars against a long mismatch end quickly (no exponential backtracking).
        let text = "a".repeat(4096);
        no(&format!("{}b", "*a".repeat(64)), &text);
    }
}
