//! Custody of secret key files: a key file that the group or others may read or write is refused
//! before it is read, so a key copied with the default umask (0644) never goes into service.

use std::path::Path;

/// Why a key file's custody is refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read its permissions: {0}")]
    Metadata(std::io::Error),
    /// Group or others have some access (`mode & 0o077 != 0`).
    #[error(
        "mode {mode:04o} lets the group or others read or write it; a secret key must be \
         readable by the gateway's user only: run `chmod 600 {path}`"
    )]
    TooOpen { path: String, mode: u32 },
}

/// Refuses a folder or file the gateway trusts (policies, schemas, the registry) when others may
/// write it: anyone on the host could then change what the gateway enforces at the next reload.
pub fn check_not_world_writable(path: &Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // A missing path is for the loader to report, with the configuration key that names it.
        let Ok(meta) = std::fs::metadata(path) else {
            return Ok(());
        };
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o002 != 0 {
            return Err(format!(
                "{}: mode {mode:04o} lets anyone on the host change what the gateway enforces; \
                 run `chmod o-w {}`",
                path.display(),
                path.display()
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Refuses `path` when its group or others bits are set (Unix; elsewhere it always passes).
/// Symbolic links are followed: what counts is the file the key is read from.
pub fn check_private(path: &Path) -> Result<(), KeyFileError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(KeyFileError::Metadata)?
            .permissions()
            .mode()
            & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::TooOpen {
                path: path.display().to_string(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Writes a new secret file readable and writable by its owner only (0600 whatever the umask;
/// an existing file is replaced and set to 0600).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    #[test]
    fn a_folder_others_may_write_is_refused_naming_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("policies");
        std::fs::create_dir(&rules).unwrap();
        chmod(&rules, 0o755);
        assert!(check_not_world_writable(&rules).is_ok());
        chmod(&rules, 0o777);
        let e = check_not_world_writable(&rules).unwrap_err();
        assert!(e.contains("0777") && e.contains("chmod o-w"), "{e}");
        assert!(check_not_world_writable(&dir.path().join("missing")).is_ok());
    }

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn only_owner_modes_pass() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        write_private(&path, b"secret").unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        check_private(&path).unwrap();
        chmod(&path, 0o400);
        check_private(&path).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602, 0o610] {
            chmod(&path, mode);
            let e = check_private(&path).unwrap_err().to_string();
            assert!(e.contains(&format!("{mode:04o}")), "{e}");
            assert!(e.contains("chmod 600"), "{e}");
            assert!(e.contains(&path.display().to_string()), "{e}");
        }
    }

    #[test]
    fn write_private_tightens_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        std::fs::write(&path, "old").unwrap();
        chmod(&path, 0o644);
        write_private(&path, b"new").unwrap();
        check_private(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            check_private(&dir.path().join("nope")),
            Err(KeyFileError::Metadata(_))
        ));
    }
}
