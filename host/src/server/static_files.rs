//! Files of a directory served over plain HTTP (`--static-dir`), and the
//! shipped channel recovery helper at [`RECOVERY_JS_PATH`].
//!
//! Why the server serves files at all: a small web page next to the server
//! (the chat example of `make run`) then needs no other web server, and
//! its WebSocket has the page's own origin. It is not a web server: GET
//! and HEAD of whole files, a content type by extension, no ranges,
//! validators or compression. Put a CDN or a web server in front for more.
//!
//! The rules, since the paths come from anyone:
//!
//! - A request path is percent-decoded once, then split on `/`, and every
//!   rule applies to the decoded segments, so `%2e%2e` is `..`.
//! - A segment that starts with `.` is never served: that refuses `..` and
//!   `.` (no way out of the directory, nor a second name for a file), and
//!   dotfiles (`.git`, `.env`) that a deploy may leave there.
//! - Empty segments (`//`) are refused: a path has one spelling, and a
//!   redirect built from it cannot become `//host`, which browsers read as
//!   another site.
//! - The file found is canonicalised (symbolic links resolved) and must
//!   still be inside the canonical directory, outside any dotted
//!   directory: a link may point within the directory, never out of it.
//! - Only regular files are read (opening a FIFO would block), and none
//!   larger than [`MAX_FILE_BYTES`], since a file is read whole into memory;
//!   a client has [`SEND_TIMEOUT`] to take it.
//! - Every answer says `X-Content-Type-Options: nosniff`, so a browser runs
//!   as script only what is served as script.
//!
//! A directory's path serves its `index.html`; without the final `/` it is
//! redirected (301) to the path with it, so that the page's relative links
//! (`app.js`) resolve inside the directory.

use super::http::{Request, Response};
use crate::log_limit;
use percent_encoding::percent_decode_str;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// Where the server serves `client/recovery.js`, with or without
/// `--static-dir`: a page anywhere can load the helper that matches the
/// server it talks to.
pub(super) const RECOVERY_JS_PATH: &str = "/wasmcluster/recovery.js";

/// The channel recovery helper for `socketcluster-client`, as shipped in
/// `client/`: one file, embedded, never copied.
const RECOVERY_JS: &str = include_str!("../../../client/recovery.js");

/// The largest file served. Files are read whole into memory, so this
/// bounds what one request costs; a page's scripts and images are far
/// smaller.
pub(super) const MAX_FILE_BYTES: u64 = 4 << 20;

/// The longest a client may take to receive a file: one that does not
/// read would otherwise hold the file's bytes and its connection for ever.
pub(super) const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// The file a directory's path serves.
const INDEX: &str = "index.html";

/// The answer to a request for [`RECOVERY_JS_PATH`].
pub(super) fn recovery_helper(method: &str) -> Response {
    match method {
        "GET" => script(RECOVERY_JS),
        "HEAD" => script(RECOVERY_JS).head_only(),
        _ => method_not_allowed(),
    }
}

fn script(text: &str) -> Response {
    Response::with_content_type(200, "OK", "text/javascript; charset=utf-8", text)
        .with_header("X-Content-Type-Options", "nosniff")
        .with_header("Cache-Control", "no-cache")
}

/// The answer to `request` from the files of `root` (canonical). The file
/// system is read on tokio's blocking threads, not on the worker's.
pub(super) async fn serve(root: &Path, request: &Request) -> Response {
    let head = match request.method.as_str() {
        "GET" => false,
        "HEAD" => true,
        _ => return method_not_allowed(),
    };
    let root = root.to_owned();
    let path = request.path.clone();
    let query = request
        .target
        .split_once('?')
        .map(|(_, query)| query.to_owned());
    let response = tokio::task::spawn_blocking(move || lookup(&root, &path, query.as_deref()))
        .await
        .unwrap_or_else(|_| {
            Response::text(500, "Internal Server Error", "Could not read the file\n")
        });
    if head { response.head_only() } else { response }
}

/// What a request path names in the directory.
#[derive(Debug, PartialEq)]
enum Wanted {
    /// This path, relative to the directory: a file, or a directory to
    /// redirect to with a final `/`.
    Entry(PathBuf),
    /// The `index.html` of this directory (relative; empty for the root).
    Index(PathBuf),
}

/// Why a request path names nothing that may be served.
#[derive(Debug, PartialEq)]
enum Refused {
    /// Not a path, not UTF-8 once decoded, or with a NUL: 400.
    Malformed,
    /// A segment that is empty, dotted or has a backslash: 404, as if
    /// there were nothing.
    NotServed,
}

/// Apply the path rules (module documentation) to a request path as sent.
fn wanted(path: &str) -> Result<Wanted, Refused> {
    let decoded = percent_decode_str(path)
        .decode_utf8()
        .map_err(|_| Refused::Malformed)?;
    let Some(inside) = decoded.strip_prefix('/') else {
        return Err(Refused::Malformed);
    };
    if inside.contains('\0') {
        return Err(Refused::Malformed);
    }
    if inside.starts_with('/') {
        return Err(Refused::NotServed);
    }
    let (inside, directory) = match inside.strip_suffix('/') {
        Some(inside) => (inside, true),
        None => (inside, inside.is_empty()),
    };
    let mut relative = PathBuf::new();
    if !inside.is_empty() {
        for segment in inside.split('/') {
            if segment.is_empty() || segment.starts_with('.') || segment.contains('\\') {
                return Err(Refused::NotServed);
            }
            relative.push(segment);
        }
    }
    Ok(if directory {
        Wanted::Index(relative)
    } else {
        Wanted::Entry(relative)
    })
}

/// The answer for `path` (with its query string, kept by a redirect),
/// reading the file system.
fn lookup(root: &Path, path: &str, query: Option<&str>) -> Response {
    let target = match wanted(path) {
        Ok(Wanted::Entry(relative)) => root.join(relative),
        Ok(Wanted::Index(relative)) => root.join(relative).join(INDEX),
        Err(Refused::Malformed) => {
            return refusal(400, "Bad Request", "Malformed path\n");
        }
        Err(Refused::NotServed) => return not_found(),
    };
    let found = match target.canonicalize() {
        Ok(found) if is_inside(root, &found) => found,
        Ok(_) => return not_found(),
        Err(error) => return unreadable(&target, &error),
    };
    let metadata = match std::fs::metadata(&found) {
        Ok(metadata) => metadata,
        Err(error) => return unreadable(&found, &error),
    };
    if metadata.is_dir() {
        // Only an `Entry` can be a directory: an `Index` names a file in it.
        let location = match query {
            Some(query) => format!("{path}/?{query}"),
            None => format!("{path}/"),
        };
        return refusal(301, "Moved Permanently", &format!("See {location}\n"))
            .with_header("Location", &location);
    }
    if !metadata.is_file() {
        return not_found();
    }
    if metadata.len() > MAX_FILE_BYTES {
        return too_large(&found);
    }
    let mut body = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
    let read = std::fs::File::open(&found)
        .and_then(|file| file.take(MAX_FILE_BYTES + 1).read_to_end(&mut body));
    match read {
        Ok(_) if body.len() as u64 > MAX_FILE_BYTES => too_large(&found),
        Ok(_) => Response::with_content_type(200, "OK", content_type(&found), body)
            .with_header("X-Content-Type-Options", "nosniff")
            .with_header("Cache-Control", "no-cache"),
        Err(error) => unreadable(&found, &error),
    }
}

/// Whether `found` (canonical) lies inside `root` (canonical) and under no
/// dotted name: a symbolic link may lead elsewhere.
fn is_inside(root: &Path, found: &Path) -> bool {
    found.strip_prefix(root).is_ok_and(|relative| {
        relative.components().all(|component| match component {
            Component::Normal(name) => !name.to_string_lossy().starts_with('.'),
            _ => false,
        })
    })
}

/// The content type of a file, by its extension.
fn content_type(file: &Path) -> &'static str {
    let extension = file
        .extension()
        .map(|extension| extension.to_string_lossy().to_ascii_lowercase());
    match extension.as_deref() {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        _ => "application/octet-stream",
    }
}

fn refusal(status: u16, reason: &'static str, body: &str) -> Response {
    Response::text(status, reason, body).with_header("X-Content-Type-Options", "nosniff")
}

fn not_found() -> Response {
    refusal(404, "Not Found", "Not found\n")
}

fn method_not_allowed() -> Response {
    refusal(
        405,
        "Method Not Allowed",
        "Static files are served to GET and HEAD only\n",
    )
    .with_header("Allow", "GET, HEAD")
}

/// A 404 for a path that names nothing readable; anything but plain
/// absence is logged, since the operator may not know the file is
/// unreadable.
fn unreadable(path: &Path, error: &std::io::Error) -> Response {
    let absent = matches!(
        error.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
    );
    if !absent && let Some(left_out) = log_limit::admit("static file unreadable") {
        tracing::warn!(
            file = %path.display(),
            left_out,
            "cannot serve a static file: {error}"
        );
    }
    not_found()
}

fn too_large(path: &Path) -> Response {
    if let Some(left_out) = log_limit::admit("static file too large") {
        tracing::warn!(
            file = %path.display(),
            left_out,
            max_bytes = MAX_FILE_BYTES,
            "refusing to serve a static file larger than the cap"
        );
    }
    refusal(
        403,
        "Forbidden",
        &format!(
            "This file is larger than the {} MiB a static file may have\n",
            MAX_FILE_BYTES >> 20
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn entry(path: &str) -> Result<Wanted, Refused> {
        Ok(Wanted::Entry(PathBuf::from(path)))
    }

    fn index(path: &str) -> Result<Wanted, Refused> {
        Ok(Wanted::Index(PathBuf::from(path)))
    }

    #[test]
    fn paths_name_files_and_directories() {
        assert_eq!(wanted("/"), index(""));
        assert_eq!(wanted("/chat/"), index("chat"));
        assert_eq!(wanted("/chat"), entry("chat"));
        assert_eq!(
            wanted("/vendor/client.min.js"),
            entry("vendor/client.min.js")
        );
        assert_eq!(wanted("/a%20b/c%2Fd"), entry("a b/c/d"));
        assert_eq!(wanted("/caf%C3%A9.txt"), entry("café.txt"));
        assert_eq!(wanted("/a..b/c."), entry("a..b/c."));
    }

    #[test]
    fn traversal_and_dotfiles_are_not_served() {
        for path in [
            "/..",
            "/../Cargo.toml",
            "/chat/../../Cargo.toml",
            "/%2e%2e/Cargo.toml",
            "/%2E%2E/%2e%2E/etc/passwd",
            "/chat/%2e%2e%2f%2e%2e%2fCargo.toml",
            "/..%2fCargo.toml",
            "/.",
            "/./chat/",
            "/.git/config",
            "/chat/.env",
            "/%2egit/config",
            "//",
            "//etc/passwd",
            "/chat//index.html",
            "/%2F%2Fexample.com",
            "/..\\Cargo.toml",
            "/a%5c..%5cb",
        ] {
            assert_eq!(wanted(path), Err(Refused::NotServed), "{path}");
        }
    }

    #[test]
    fn malformed_paths_are_bad_requests() {
        for path in ["", "chat/", "http://example.com/", "/%ff", "/a%00b", "*"] {
            assert_eq!(wanted(path), Err(Refused::Malformed), "{path}");
        }
    }

    #[test]
    fn content_types_by_extension() {
        let of = |name: &str| content_type(Path::new(name));
        assert_eq!(of("index.html"), "text/html; charset=utf-8");
        assert_eq!(of("INDEX.HTM"), "text/html; charset=utf-8");
        assert_eq!(of("app.js"), "text/javascript; charset=utf-8");
        assert_eq!(of("style.css"), "text/css; charset=utf-8");
        assert_eq!(of("logo.svg"), "image/svg+xml");
        assert_eq!(of("logo.png"), "image/png");
        assert_eq!(of("data.json"), "application/json");
        assert_eq!(of("favicon.ico"), "image/x-icon");
        assert_eq!(of("notes.txt"), "text/plain; charset=utf-8");
        assert_eq!(of("archive.tar.gz"), "application/octet-stream");
        assert_eq!(of("Makefile"), "application/octet-stream");
    }

    /// A served directory (canonical, as the config makes it) with a page,
    /// a dotfile, a file beside it (outside) and links in and out.
    fn site() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("web");
        fs::create_dir_all(root.join("chat")).unwrap();
        fs::create_dir_all(root.join(".hidden")).unwrap();
        fs::write(root.join("chat/index.html"), "<p>chat</p>").unwrap();
        fs::write(root.join("chat/app.js"), "go()").unwrap();
        fs::write(root.join(".env"), "SECRET=1").unwrap();
        fs::write(root.join(".hidden/page.html"), "hidden").unwrap();
        fs::write(dir.path().join("outside.txt"), "outside").unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside.txt"), root.join("out.txt")).unwrap();
        std::os::unix::fs::symlink(root.join("chat/app.js"), root.join("alias.js")).unwrap();
        std::os::unix::fs::symlink(root.join(".env"), root.join("env.txt")).unwrap();
        let root = root.canonicalize().unwrap();
        (dir, root)
    }

    fn get(root: &Path, target: &str) -> Response {
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (target, None),
        };
        lookup(root, path, query)
    }

    #[test]
    fn files_are_served_with_their_type_and_nosniff() {
        let (_dir, root) = site();
        let page = get(&root, "/chat/");
        assert_eq!(page.status(), 200);
        assert_eq!(page.body(), b"<p>chat</p>");
        assert_eq!(
            page.header("Content-Type"),
            Some("text/html; charset=utf-8")
        );
        assert_eq!(page.header("X-Content-Type-Options"), Some("nosniff"));
        let script = get(&root, "/chat/app.js");
        assert_eq!(script.body(), b"go()");
        assert_eq!(
            script.header("Content-Type"),
            Some("text/javascript; charset=utf-8")
        );
        assert_eq!(get(&root, "/chat/index.html").body(), b"<p>chat</p>");
        // A link that stays inside is followed.
        assert_eq!(get(&root, "/alias.js").body(), b"go()");
    }

    #[test]
    fn a_directory_without_its_slash_is_redirected_with_the_query() {
        let (_dir, root) = site();
        let redirect = get(&root, "/chat?room=lobby");
        assert_eq!(redirect.status(), 301);
        assert_eq!(redirect.header("Location"), Some("/chat/?room=lobby"));
        assert_eq!(get(&root, "/chat").header("Location"), Some("/chat/"));
        // The root has no index.html.
        assert_eq!(get(&root, "/").status(), 404);
    }

    #[test]
    fn nothing_outside_or_hidden_is_served() {
        let (_dir, root) = site();
        for target in [
            "/../outside.txt",
            "/%2e%2e/outside.txt",
            "/out.txt",
            "/env.txt",
            "/.env",
            "/.hidden/page.html",
            "/missing.html",
            "/chat/app.js/",
            "/chat/nothing/",
        ] {
            let response = get(&root, target);
            assert_eq!(response.status(), 404, "{target}");
            assert_eq!(
                response.header("X-Content-Type-Options"),
                Some("nosniff"),
                "{target}"
            );
        }
        assert_eq!(get(&root, "/%ff").status(), 400);
    }

    #[test]
    fn files_over_the_cap_are_refused() {
        let (_dir, root) = site();
        let file = fs::File::create(root.join("big.png")).unwrap();
        file.set_len(MAX_FILE_BYTES + 1).unwrap();
        assert_eq!(get(&root, "/big.png").status(), 403);
        file.set_len(MAX_FILE_BYTES).unwrap();
        assert_eq!(get(&root, "/big.png").status(), 200);
    }

    #[tokio::test]
    async fn head_answers_the_head_and_other_methods_get_405() {
        let (_dir, root) = site();
        let request = |method: &str, target: &str| Request {
            method: method.to_owned(),
            path: target.split('?').next().unwrap().to_owned(),
            target: target.to_owned(),
            headers: Vec::new(),
        };
        let head = serve(&root, &request("HEAD", "/chat/app.js")).await;
        let bytes = String::from_utf8(head.to_bytes()).unwrap();
        assert!(bytes.starts_with("HTTP/1.1 200 OK\r\n"), "{bytes}");
        assert!(bytes.contains("Content-Length: 4\r\n"), "{bytes}");
        assert!(bytes.ends_with("\r\n\r\n"), "no body: {bytes}");
        let redirect = serve(&root, &request("GET", "/chat?x=1")).await;
        assert_eq!(redirect.header("Location"), Some("/chat/?x=1"));
        let post = serve(&root, &request("POST", "/chat/app.js")).await;
        assert_eq!(post.status(), 405);
        assert_eq!(post.header("Allow"), Some("GET, HEAD"));
    }

    #[test]
    fn the_recovery_helper_is_the_shipped_file() {
        let helper = recovery_helper("GET");
        assert_eq!(helper.status(), 200);
        assert!(
            std::str::from_utf8(helper.body())
                .unwrap()
                .contains("function withRecovery(socket")
        );
        assert_eq!(
            helper.header("Content-Type"),
            Some("text/javascript; charset=utf-8")
        );
        assert_eq!(helper.header("X-Content-Type-Options"), Some("nosniff"));
        assert_eq!(recovery_helper("DELETE").status(), 405);
    }
}
