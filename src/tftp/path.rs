//! Which file a requested name may open: only regular files inside the boot-file roots.
//! The name is checked lexically first (no `..`, not absolute once the one leading `/`
//! clients add is stripped), then resolved in each root in order and canonicalized, and
//! the result must still lie inside that root, so a symlink cannot lead out of it.
//! Refusals carry fixed messages: a client never learns a server path.

use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use super::packet::ErrorCode;

/// Debian's `ipxe` package: the fallback for the iPXE binaries.
pub const SYSTEM_IPXE_DIR: &str = "/usr/lib/ipxe";

/// The roots TFTP serves from, in search order: `<images>/ipxe/`, then Debian's iPXE.
pub fn roots(images_dir: &Path) -> Vec<PathBuf> {
    vec![images_dir.join("ipxe"), PathBuf::from(SYSTEM_IPXE_DIR)]
}

/// Why a request is refused, with the TFTP error it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NotFound,
    /// Traversal, an absolute path, or a symlink out of the root.
    Denied,
}

impl Refusal {
    pub fn code(self) -> ErrorCode {
        match self {
            Refusal::NotFound => ErrorCode::FileNotFound,
            Refusal::Denied => ErrorCode::AccessViolation,
        }
    }

    /// The message sent to the client: fixed text, no path.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::NotFound => "file not found",
            Refusal::Denied => "access violation",
        }
    }
}

/// The relative path a requested name stands for, or why it cannot be one. Pure.
pub fn sanitize(name: &[u8]) -> Result<PathBuf, Refusal> {
    let name = std::str::from_utf8(name).map_err(|_| Refusal::NotFound)?;
    // Clients send "/snponly.efi" as often as "snponly.efi"; one slash is their habit,
    // anything after it must be relative.
    let name = name.strip_prefix('/').unwrap_or(name);
    let mut rel = PathBuf::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(part) => rel.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(Refusal::Denied);
            }
        }
    }
    if rel.as_os_str().is_empty() {
        return Err(Refusal::NotFound);
    }
    Ok(rel)
}

/// An opened file to serve and its size.
#[derive(Debug)]
pub struct Opened {
    pub file: File,
    pub size: u64,
}

/// Opens `name` from the first root that has it. Blocking (a few system calls).
pub fn open(roots: &[PathBuf], name: &[u8]) -> Result<Opened, Refusal> {
    let rel = sanitize(name)?;
    for root in roots {
        // A root that does not exist (no images/ipxe/, no ipxe package) is skipped.
        let Ok(root) = root.canonicalize() else {
            continue;
        };
        let real = match root.join(&rel).canonicalize() {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => continue,
            Err(_) => return Err(Refusal::Denied),
        };
        if !real.starts_with(&root) {
            return Err(Refusal::Denied);
        }
        // The canonical path has no symlinks left; O_NOFOLLOW refuses one swapped in since.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&real)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => Refusal::NotFound,
                _ => Refusal::Denied,
            })?;
        let meta = file.metadata().map_err(|_| Refusal::Denied)?;
        if !meta.is_file() {
            return Err(Refusal::NotFound);
        }
        return Ok(Opened {
            file,
            size: meta.len(),
        });
    }
    Err(Refusal::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_accepts_plain_and_leading_slash_names() {
        assert_eq!(sanitize(b"snponly.efi"), Ok(PathBuf::from("snponly.efi")));
        assert_eq!(sanitize(b"/snponly.efi"), Ok(PathBuf::from("snponly.efi")));
        assert_eq!(
            sanitize(b"arm64/./snponly.efi"),
            Ok(PathBuf::from("arm64/snponly.efi"))
        );
        assert_eq!(sanitize(b"a//b"), Ok(PathBuf::from("a/b")));
    }

    #[test]
    fn sanitize_refuses_traversal_and_absolute_paths() {
        for bad in [
            &b"../etc/passwd"[..],
            b"/../etc/passwd",
            b"arm64/../../x",
            b"//etc/passwd",
            b"..",
            b"a/..",
        ] {
            assert_eq!(
                sanitize(bad),
                Err(Refusal::Denied),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(sanitize(b"/"), Err(Refusal::NotFound));
        assert_eq!(sanitize(b"."), Err(Refusal::NotFound));
        assert_eq!(sanitize(b"\xff\xfe"), Err(Refusal::NotFound));
        // "..." and "..x" are ordinary names.
        assert!(sanitize(b"...").is_ok());
        assert!(sanitize(b"..x").is_ok());
    }

    #[test]
    fn open_searches_roots_in_order_and_stays_inside() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, outside) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("secret"),
        );
        for d in [&a, &b] {
            std::fs::create_dir_all(d.join("sub")).unwrap();
        }
        std::fs::write(a.join("first.bin"), b"from a").unwrap();
        std::fs::write(b.join("first.bin"), b"from b!").unwrap();
        std::fs::write(b.join("sub/only-b.bin"), b"bb").unwrap();
        std::fs::write(&outside, b"do not serve").unwrap();
        std::os::unix::fs::symlink(&outside, a.join("escape")).unwrap();
        std::os::unix::fs::symlink("first.bin", a.join("inside-link")).unwrap();
        let roots = vec![dir.path().join("missing"), a.clone(), b.clone()];

        assert_eq!(open(&roots, b"first.bin").unwrap().size, 6);
        assert_eq!(open(&roots, b"/sub/only-b.bin").unwrap().size, 2);
        assert_eq!(open(&roots, b"inside-link").unwrap().size, 6);
        assert_eq!(open(&roots, b"escape").unwrap_err(), Refusal::Denied);
        assert_eq!(open(&roots, b"nope").unwrap_err(), Refusal::NotFound);
        assert_eq!(open(&roots, b"sub").unwrap_err(), Refusal::NotFound);
        assert_eq!(open(&roots, b"first.bin/x").unwrap_err(), Refusal::NotFound);
        assert_eq!(open(&roots, b"../secret").unwrap_err(), Refusal::Denied);
        let abs = outside.to_str().unwrap().to_string();
        assert_eq!(
            open(&roots, format!("/{abs}").as_bytes()).unwrap_err(),
            Refusal::Denied
        );
        for r in [Refusal::NotFound, Refusal::Denied] {
            assert!(!r.message().contains('/'));
        }
    }
}
