//! Making a written file durable, with errors that name it.

use std::path::Path;

use dynacore_runtime::File;

use crate::error::{Error, Result};

/// Syncs a finished file's data and closes it (`path` names it in errors).
///
/// # Errors
/// I/O errors from `fdatasync` or `close`.
pub async fn sync_and_close(file: File, path: &Path) -> Result<()> {
    file.sync_data()
        .await
        .map_err(|e| Error::io("sync", path, e))?;
    file.close().await.map_err(|e| Error::io("close", path, e))
}
