//! The page and its assets: built into the binary (see `build.rs`), or read from `STATIC_DIR`
//! so an edited page shows without a rebuild or a restart (kindling sync).
//!
//! A requested name is percent-decoded and must be a plain relative path of safe characters:
//! no `..`, no dot files, no backslashes or NUL, so it cannot name anything outside the folder;
//! with a folder on disk, the resolved path must also stay inside it (no symlink out).
//!
//! Files on disk are served from memory and read again only when they change: each request
//! resolves the name and stats the file (both cheap, answered from the kernel's caches), and
//! the cached bytes are used while size, modification time and inode are those they were
//! read with. An edit, however it is written (in place, or a new file renamed over the old
//! as editors and `kubectl cp` do), changes one of them. So a disk read happens on the
//! reactor thread only once per change of a file, not per request; the cache holds at most
//! `MAX_CACHED_FILES` files and `MAX_CACHE_BYTES` bytes, least recently used out first.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;

use crate::http::reply::Reply;

include!(concat!(env!("OUT_DIR"), "/builtin_files.rs"));

/// Larger files are not served (the page is a few kilobytes).
const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;
/// Files from disk kept in memory: a page and its assets are a handful; the cap keeps a
/// folder of many files from growing the cache without bound.
const MAX_CACHED_FILES: usize = 256;
/// Bytes of files from disk kept in memory: two of the largest servable files.
const MAX_CACHE_BYTES: usize = 2 * MAX_FILE_BYTES as usize;

#[derive(Debug)]
pub struct StaticFiles {
    dir: Option<PathBuf>,
    /// Interior mutability: routing holds `&StaticFiles`; the reactor is one thread.
    cache: RefCell<FileCache>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticFile {
    pub body: Bytes,
    pub content_type: &'static str,
}

impl StaticFiles {
    /// `dir`: serve from this folder; `None`: serve the copy built into the binary.
    pub fn new(dir: Option<&Path>) -> std::io::Result<StaticFiles> {
        let dir = dir.map(std::fs::canonicalize).transpose()?;
        Ok(StaticFiles {
            dir,
            cache: RefCell::new(FileCache::default()),
        })
    }

    pub fn source(&self) -> String {
        match &self.dir {
            Some(dir) => dir.display().to_string(),
            None => "built into the binary".into(),
        }
    }

    /// How many times a file was read from disk (not served from the cache).
    pub fn disk_reads(&self) -> u64 {
        self.cache.borrow().disk_reads
    }

    /// The file at `raw_name` (relative, still percent-encoded), or a 404/400 reply.
    pub fn get(&self, raw_name: &str) -> Result<StaticFile, Reply> {
        let not_found = || Reply::error(404, "no such file");
        let name = percent_encoding::percent_decode_str(raw_name)
            .decode_utf8()
            .map_err(|_| Reply::error(400, "bad file name"))?;
        if !is_safe_name(&name) {
            return Err(Reply::error(400, "bad file name"));
        }
        let body = match &self.dir {
            None => BUILTIN_FILES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, bytes)| Bytes::from_static(bytes))
                .ok_or_else(not_found)?,
            Some(dir) => {
                let mut cache = self.cache.borrow_mut();
                match servable_file(dir, &name) {
                    Some((path, version)) => cache.body(&name, &path, version),
                    None => None,
                }
                .ok_or_else(|| {
                    cache.forget(&name);
                    not_found()
                })?
            }
        };
        Ok(StaticFile {
            body,
            content_type: content_type(&name),
        })
    }
}

/// The file `name` names inside `dir`, if it is a regular file inside it of a servable size:
/// its resolved path and what it looks like now.
fn servable_file(dir: &Path, name: &str) -> Option<(PathBuf, Version)> {
    let path = std::fs::canonicalize(dir.join(name)).ok()?;
    if !path.starts_with(dir) {
        return None;
    }
    let meta = std::fs::metadata(&path).ok()?;
    if !meta.is_file() || meta.len() > MAX_FILE_BYTES {
        return None;
    }
    Some((path, Version::of(&meta)))
}

/// What tells one state of a file from the next without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Version {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl Version {
    fn of(meta: &std::fs::Metadata) -> Version {
        Version {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode: meta.ino(),
        }
    }
}

#[derive(Debug)]
struct Cached {
    version: Version,
    body: Bytes,
    last_used: u64,
}

/// Files read from disk, by requested name.
#[derive(Debug, Default)]
struct FileCache {
    entries: HashMap<String, Cached>,
    bytes: usize,
    /// Counts lookups, to find the least recently used entry.
    tick: u64,
    disk_reads: u64,
}

impl FileCache {
    /// The file's bytes: the cached ones if it has not changed, else read from disk (and
    /// cached, room permitting). `None` if it cannot be read or grew past the size limit.
    fn body(&mut self, name: &str, path: &Path, version: Version) -> Option<Bytes> {
        self.tick += 1;
        if let Some(hit) = self.entries.get_mut(name)
            && hit.version == version
        {
            hit.last_used = self.tick;
            return Some(hit.body.clone());
        }
        self.forget(name);
        self.disk_reads += 1;
        // Read at most one byte past the limit: the file may have grown since the stat.
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .ok()?
            .take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .ok()?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return None;
        }
        let body = Bytes::from(bytes);
        self.insert(name, version, body.clone());
        Some(body)
    }

    fn insert(&mut self, name: &str, version: Version, body: Bytes) {
        if body.len() > MAX_CACHE_BYTES {
            return;
        }
        while self.entries.len() >= MAX_CACHED_FILES || self.bytes + body.len() > MAX_CACHE_BYTES {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, cached)| cached.last_used)
                .map(|(name, _)| name.clone())
            else {
                break;
            };
            self.forget(&oldest);
        }
        self.bytes += body.len();
        self.entries.insert(
            name.to_string(),
            Cached {
                version,
                body,
                last_used: self.tick,
            },
        );
    }

    fn forget(&mut self, name: &str) {
        if let Some(gone) = self.entries.remove(name) {
            self.bytes -= gone.body.len();
        }
    }
}

/// Plain relative names only: segments of letters, digits, `-`, `_` and `.`, none starting
/// with a dot (no `..`, no hidden files).
fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.split('/').all(|segment| {
            !segment.is_empty()
                && !segment.starts_with('.')
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("txt") => "text/plain; charset=utf-8",
        _ => mime_guess::from_path(name)
            .first_raw()
            .unwrap_or("application/octet-stream"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_serve_the_built_in_page() {
        let files = StaticFiles::new(None).unwrap();
        let page = files.get("index.html").unwrap();
        assert_eq!(page.content_type, "text/html; charset=utf-8");
        assert!(!page.body.is_empty());
    }

    #[test]
    fn should_refuse_names_that_could_escape() {
        let files = StaticFiles::new(None).unwrap();
        for bad in [
            "../Cargo.toml",
            "%2e%2e/Cargo.toml",
            "%2E%2E%2FCargo.toml",
            "..%5cCargo.toml",
            "a\\b",
            "index.html%00",
            "/etc/passwd",
            ".env",
            "a//b",
            "",
        ] {
            assert_eq!(files.get(bad).unwrap_err().status, 400, "{bad}");
        }
        assert_eq!(files.get("missing.js").unwrap_err().status, 404);
    }

    #[test]
    fn should_refuse_symlinks_out_of_the_folder() {
        let dir = std::env::temp_dir().join(format!("herald-static-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ok.css"), "body{}").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.join("out.txt")).unwrap();
        let files = StaticFiles::new(Some(&dir)).unwrap();
        assert_eq!(
            files.get("ok.css").unwrap().content_type,
            "text/css; charset=utf-8"
        );
        assert_eq!(files.get("out.txt").unwrap_err().status, 404);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn should_name_content_types() {
        assert_eq!(content_type("app.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("logo.svg"), "image/svg+xml");
        assert_eq!(content_type("blob"), "application/octet-stream");
    }

    /// A fresh folder under the temp dir for one test.
    fn temp_folder(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("herald-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn should_read_a_file_again_only_when_it_changes() {
        let dir = temp_folder("static-cache");
        std::fs::write(dir.join("index.html"), "<p>one</p>").unwrap();
        let files = StaticFiles::new(Some(&dir)).unwrap();
        for _ in 0..5 {
            assert_eq!(files.get("index.html").unwrap().body, "<p>one</p>");
        }
        assert_eq!(files.disk_reads(), 1, "unchanged: served from memory");
        // An editor's save: a new file renamed over the old one.
        std::fs::write(dir.join("next.tmp"), "<p>two, longer</p>").unwrap();
        std::fs::rename(dir.join("next.tmp"), dir.join("index.html")).unwrap();
        assert_eq!(files.get("index.html").unwrap().body, "<p>two, longer</p>");
        assert_eq!(files.disk_reads(), 2);
        std::fs::remove_file(dir.join("index.html")).unwrap();
        assert_eq!(files.get("index.html").unwrap_err().status, 404);
        assert_eq!(
            files.cache.borrow().bytes,
            0,
            "a deleted file leaves the cache"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn should_keep_the_cache_within_its_caps() {
        let dir = temp_folder("static-cap");
        let files = StaticFiles::new(Some(&dir)).unwrap();
        // More files than the cache holds: it keeps the most recently used ones.
        for i in 0..MAX_CACHED_FILES + 10 {
            std::fs::write(dir.join(format!("f{i}.txt")), format!("file {i}")).unwrap();
            assert_eq!(
                files.get(&format!("f{i}.txt")).unwrap().body,
                format!("file {i}")
            );
        }
        assert_eq!(files.cache.borrow().entries.len(), MAX_CACHED_FILES);
        let reads = files.disk_reads();
        files
            .get(&format!("f{}.txt", MAX_CACHED_FILES + 9))
            .unwrap();
        assert_eq!(files.disk_reads(), reads, "the newest is still cached");
        files.get("f0.txt").unwrap();
        assert_eq!(files.disk_reads(), reads + 1, "the oldest was evicted");
        // Bytes: large files push the others out; the total stays under the cap.
        let big = vec![b'x'; MAX_FILE_BYTES as usize];
        for i in 0..3 {
            std::fs::write(dir.join(format!("big{i}.bin")), &big).unwrap();
            assert_eq!(
                files.get(&format!("big{i}.bin")).unwrap().body.len(),
                big.len()
            );
            assert!(files.cache.borrow().bytes <= MAX_CACHE_BYTES);
        }
        let cache = files.cache.borrow();
        let held: usize = cache.entries.values().map(|c| c.body.len()).sum();
        assert_eq!(held, cache.bytes, "byte count matches what is held");
        drop(cache);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
