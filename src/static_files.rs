//! The page and its assets: built into the binary (see `build.rs`), or read from `STATIC_DIR`
//! on each request so an edited page shows without a rebuild (kindling sync).
//!
//! A requested name is percent-decoded and must be a plain relative path of safe characters:
//! no `..`, no dot files, no backslashes or NUL, so it cannot name anything outside the folder;
//! with a folder on disk, the resolved path must also stay inside it (no symlink out).

use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::http::reply::Reply;

include!(concat!(env!("OUT_DIR"), "/builtin_files.rs"));

/// Larger files are not served (the page is a few kilobytes).
const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct StaticFiles {
    dir: Option<PathBuf>,
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
        Ok(StaticFiles { dir })
    }

    pub fn source(&self) -> String {
        match &self.dir {
            Some(dir) => dir.display().to_string(),
            None => "built into the binary".into(),
        }
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
                let path = std::fs::canonicalize(dir.join(&*name)).map_err(|_| not_found())?;
                if !path.starts_with(dir) {
                    return Err(not_found());
                }
                let meta = std::fs::metadata(&path).map_err(|_| not_found())?;
                if !meta.is_file() || meta.len() > MAX_FILE_BYTES {
                    return Err(not_found());
                }
                Bytes::from(std::fs::read(&path).map_err(|_| not_found())?)
            }
        };
        Ok(StaticFile {
            body,
            content_type: content_type(&name),
        })
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
}
