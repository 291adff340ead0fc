//! The cluster secret: the key every node's internode frames and gossip are authenticated
//! with. A node given no secret file generates one in its data directory at its first start
//! (a cluster of one needs no setup); the nodes of a cluster are all given the same file.
//!
//! A secret file holds at least 32 bytes (surrounding whitespace ignored), such as the 64 hex
//! digits `openssl rand -hex 32` prints, and must be readable by its owner only.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use dynacore_proto::ClusterKey;

/// Why there is no cluster key.
#[derive(Debug)]
pub enum SecretError {
    /// The file is missing, readable by others, too short or unreadable (a setting to fix).
    Refused(String),
    /// A new secret could not be written.
    WriteFailed(String),
}

impl std::fmt::Display for SecretError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretError::Refused(m) | SecretError::WriteFailed(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for SecretError {}

/// The secret file a node generates in its data directory when given none.
pub const SECRET_FILE_NAME: &str = "cluster.secret";

/// The cluster key of `configured` (the file given), or of `<data_dir>/cluster.secret`, made
/// there at the first start.
///
/// # Errors
/// [`SecretError::Refused`] for a file given but missing, readable by others, too short, or
/// unreadable; [`SecretError::WriteFailed`] when a new one cannot be written.
pub fn load_or_create(
    configured: Option<&Path>,
    data_dir: &Path,
) -> Result<(ClusterKey, PathBuf), SecretError> {
    let path = match configured {
        Some(p) => p.to_path_buf(),
        None => {
            let p = data_dir.join(SECRET_FILE_NAME);
            if !p.exists() {
                create(&p)?;
                tracing::info!(
                    path = %p.display(),
                    "generated a cluster secret; give every node of the cluster this file \
                     (--cluster-secret-file)"
                );
            }
            p
        }
    };
    load(&path).map(|key| (key, path))
}

/// Reads and checks a secret file.
///
/// # Errors
/// [`SecretError::Refused`] naming the file and what is wrong with it.
pub fn load(path: &Path) -> Result<ClusterKey, SecretError> {
    let bad =
        |why: String| SecretError::Refused(format!("cluster secret {}: {why}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(bad(format!(
            "readable by others (mode {:o}); make it readable by its owner only \
             (chmod 600)",
            mode & 0o777
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    ClusterKey::new(bytes.trim_ascii()).map_err(|e| bad(e.to_string()))
}

/// Writes a new secret (64 hex digits from the system's random source) to `path`, owner-only,
/// synced with its directory entry.
fn create(path: &Path) -> Result<(), SecretError> {
    let failed = |e: std::io::Error| {
        SecretError::WriteFailed(format!("writing cluster secret {}: {e}", path.display()))
    };
    let secret: [u8; 32] = rand::random();
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(failed)?;
    file.write_all(format!("{hex}\n").as_bytes())
        .map_err(failed)?;
    file.sync_all().map_err(failed)?;
    // Whatever the umask made of it, owner-only.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(failed)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(failed)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_generated_once_and_checked_when_given() {
        let dir = tempfile::tempdir().expect("dir");
        let (_, path) = load_or_create(None, dir.path()).expect("generated");
        assert_eq!(path, dir.path().join(SECRET_FILE_NAME));
        let meta = std::fs::metadata(&path).expect("exists");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let first = std::fs::read_to_string(&path).expect("read");
        assert_eq!(first.trim().len(), 64);
        // The next start reads the same one.
        load_or_create(None, dir.path()).expect("kept");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), first);

        let given = dir.path().join("given");
        let missing = load_or_create(Some(&given), dir.path()).unwrap_err();
        assert!(missing.to_string().contains("given"), "{missing}");
        std::fs::write(&given, "  short  \n").expect("write");
        std::fs::set_permissions(&given, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let short = load(&given).unwrap_err().to_string();
        assert!(short.contains("holds 5 bytes"), "{short}");
        std::fs::write(&given, format!("\n{}\n", "ab".repeat(32))).expect("write");
        load(&given).expect("64 hex digits with whitespace around");
        std::fs::set_permissions(&given, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let open = load(&given).unwrap_err().to_string();
        assert!(open.contains("readable by others (mode 644)"), "{open}");
    }
}
