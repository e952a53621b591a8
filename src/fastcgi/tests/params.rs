use std::path::{Path, PathBuf};

use http::uri::Authority;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Version};

use crate::fastcgi::params::{
    self, build_with, resolve_script, FastCgiSettings, Params, RequestMeta, ScriptPathError,
};

fn settings() -> FastCgiSettings {
    FastCgiSettings {
        root: PathBuf::from("/var/www/html"),
        index: "index.php".into(),
        try_files: false,
        front_controller: false,
        params: Vec::new(),
    }
}

/// Builds PARAMS for a GET of `target` with `headers`, where every path "exists".
fn build_for(target: &str, headers: &HeaderMap) -> Result<Params, ScriptPathError> {
    build_full(target, headers, &settings(), |_| true)
}

fn build_full(
    target: &str,
    headers: &HeaderMap,
    settings: &FastCgiSettings,
    exists: impl Fn(&Path) -> bool,
) -> Result<Params, ScriptPathError> {
    let authority = Authority::from_static("example.com:8443");
    let meta = RequestMeta {
        method: &Method::POST,
        target,
        version: Version::HTTP_11,
        headers,
        authority: &authority,
        client: Some("203.0.113.9:51000".parse().unwrap()),
        server: Some("10.0.0.1:8443".parse().unwrap()),
        https: true,
        content_length: Some(11),
    };
    build_with(&meta, settings, exists)
}

/// A GET of `/index.php` over plain HTTP/1.1 from a unix-socket client, without a body: the
/// request tests vary one field of.
fn plain_get<'a>(headers: &'a HeaderMap, authority: &'a Authority) -> RequestMeta<'a> {
    RequestMeta {
        method: &Method::GET,
        target: "/index.php",
        version: Version::HTTP_11,
        headers,
        authority,
        client: None,
        server: None,
        https: false,
        content_length: None,
    }
}

fn get(params: &Params, name: &str) -> Option<String> {
    params
        .get(name)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

fn names(params: &Params) -> Vec<String> {
    params
        .iter()
        .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
        .collect()
}

#[test]
fn params_match_nginx_fastcgi_conf() {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("text/plain"));
    headers.insert("content-length", HeaderValue::from_static("11"));
    headers.insert("host", HeaderValue::from_static("spoofed.example"));
    headers.insert("user-agent", HeaderValue::from_static("curl/8"));
    let params = build_for("/shop/cart.php/items/7?sort=asc", &headers).unwrap();
    let expect = [
        ("SCRIPT_FILENAME", "/var/www/html/shop/cart.php"),
        ("SCRIPT_NAME", "/shop/cart.php"),
        ("PATH_INFO", "/items/7"),
        ("PATH_TRANSLATED", "/var/www/html/items/7"),
        ("DOCUMENT_ROOT", "/var/www/html"),
        ("REQUEST_URI", "/shop/cart.php/items/7?sort=asc"),
        ("DOCUMENT_URI", "/shop/cart.php/items/7"),
        ("QUERY_STRING", "sort=asc"),
        ("REQUEST_METHOD", "POST"),
        ("CONTENT_TYPE", "text/plain"),
        ("CONTENT_LENGTH", "11"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("SERVER_NAME", "example.com"),
        ("SERVER_PORT", "8443"),
        ("SERVER_ADDR", "10.0.0.1"),
        ("REMOTE_ADDR", "203.0.113.9"),
        ("REMOTE_PORT", "51000"),
        ("HTTPS", "on"),
        ("REQUEST_SCHEME", "https"),
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("SERVER_SOFTWARE", params::SERVER_SOFTWARE),
        ("REDIRECT_STATUS", "200"),
        ("HTTP_HOST", "example.com:8443"),
        ("HTTP_USER_AGENT", "curl/8"),
    ];
    for (name, value) in expect {
        assert_eq!(get(&params, name).as_deref(), Some(value), "{name}");
    }
    let names = names(&params);
    assert!(!names.contains(&"HTTP_CONTENT_TYPE".to_owned()));
    assert!(!names.contains(&"HTTP_CONTENT_LENGTH".to_owned()));
    assert_eq!(names.iter().filter(|n| *n == "HTTP_HOST").count(), 1);
    assert!(params::SERVER_SOFTWARE.starts_with("causeway/"));
}

#[test]
fn plain_http_sends_no_https_param() {
    let authority = Authority::from_static("example.com");
    let headers = HeaderMap::new();
    let meta = RequestMeta {
        version: Version::HTTP_2,
        ..plain_get(&headers, &authority)
    };
    let params = build_with(&meta, &settings(), |_| true).unwrap();
    assert_eq!(get(&params, "HTTPS"), None);
    assert_eq!(get(&params, "SERVER_PROTOCOL").as_deref(), Some("HTTP/2.0"));
    assert_eq!(get(&params, "SERVER_PORT").as_deref(), Some("80"));
    assert_eq!(get(&params, "REMOTE_ADDR").as_deref(), Some("unix:"));
    assert_eq!(get(&params, "CONTENT_LENGTH").as_deref(), Some(""));
    assert_eq!(get(&params, "QUERY_STRING").as_deref(), Some(""));
}

#[test]
fn split_is_lazy_so_the_first_php_segment_runs() {
    let script = resolve_script("/a.php/b.php", &settings(), |_| true).unwrap();
    assert_eq!(script.name, "/a.php");
    assert_eq!(script.path_info.as_deref(), Some("/b.php"));
    assert_eq!(script.filename, Path::new("/var/www/html/a.php"));
}

#[test]
fn php_must_end_a_segment_to_split() {
    let script = resolve_script("/x.php.jpg/y.php", &settings(), |_| true).unwrap();
    assert_eq!(script.name, "/x.php.jpg/y.php");
    assert_eq!(script.path_info, None);
}

#[test]
fn empty_path_info_is_omitted_not_sent_empty() {
    let params = build_for("/index.php?x=1", &HeaderMap::new()).unwrap();
    let names = names(&params);
    assert!(!names.contains(&"PATH_INFO".to_owned()));
    assert!(!names.contains(&"PATH_TRANSLATED".to_owned()));
    let slash = resolve_script("/index.php/", &settings(), |_| true).unwrap();
    assert_eq!(slash.path_info.as_deref(), Some("/"));
}

#[test]
fn proxy_header_is_never_forwarded() {
    let mut headers = HeaderMap::new();
    headers.insert("proxy", HeaderValue::from_static("http://evil:3128"));
    let params = build_for("/index.php", &headers).unwrap();
    assert_eq!(get(&params, "HTTP_PROXY"), None);
}

#[test]
fn header_names_with_underscores_are_dropped() {
    let mut headers = HeaderMap::new();
    headers.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
    headers.insert("x_forwarded_for", HeaderValue::from_static("6.6.6.6"));
    let params = build_for("/index.php", &headers).unwrap();
    let values: Vec<_> = params
        .iter()
        .filter(|(n, _)| *n == b"HTTP_X_FORWARDED_FOR")
        .map(|(_, v)| v.to_vec())
        .collect();
    assert_eq!(values, vec![b"1.2.3.4".to_vec()]);
}

#[test]
fn hop_by_hop_headers_and_those_named_by_connection_are_not_sent() {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("connection", "keep-alive, X-Secret"),
        ("keep-alive", "timeout=5"),
        ("te", "trailers"),
        ("transfer-encoding", "chunked"),
        ("upgrade", "websocket"),
        ("proxy-connection", "keep-alive"),
        ("x-secret", "hop"),
        ("authorization", "Basic dTpw"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    let params = build_for("/index.php", &headers).unwrap();
    let http: Vec<String> = names(&params)
        .into_iter()
        .filter(|n| n.starts_with("HTTP_"))
        .collect();
    // Authorization is expected by PHP (PHP_AUTH_USER), as nginx passes it.
    assert_eq!(http, vec!["HTTP_HOST", "HTTP_AUTHORIZATION"]);
}

#[test]
fn repeated_headers_are_joined_and_cookies_with_semicolons() {
    // Interleaved as a client may send them, with a repeated field that is not forwarded.
    let mut headers = HeaderMap::new();
    headers.append("accept", HeaderValue::from_static("text/html"));
    headers.append("proxy", HeaderValue::from_static("http://evil:1"));
    headers.append("cookie", HeaderValue::from_static("a=1"));
    headers.append("accept", HeaderValue::from_static("*/*"));
    headers.append("proxy", HeaderValue::from_static("http://evil:2"));
    headers.append("cookie", HeaderValue::from_static("b=2"));
    headers.append("x-last", HeaderValue::from_static("z"));
    let params = build_for("/index.php", &headers).unwrap();
    assert_eq!(
        get(&params, "HTTP_ACCEPT").as_deref(),
        Some("text/html, */*")
    );
    assert_eq!(get(&params, "HTTP_COOKIE").as_deref(), Some("a=1; b=2"));
    assert_eq!(get(&params, "HTTP_X_LAST").as_deref(), Some("z"));
    let http: Vec<String> = names(&params)
        .into_iter()
        .filter(|n| n.starts_with("HTTP_"))
        .collect();
    assert_eq!(
        http,
        vec!["HTTP_HOST", "HTTP_ACCEPT", "HTTP_COOKIE", "HTTP_X_LAST"],
        "one pair per name, none for Proxy"
    );
}

#[test]
fn unsafe_paths_are_refused_with_400() {
    let cases = [
        ("/../etc/passwd.php", ScriptPathError::DotDot),
        ("/a/%2e%2e/b.php", ScriptPathError::DotDot),
        ("/a%2fb.php", ScriptPathError::EncodedSlash),
        ("/a%2Fb.php", ScriptPathError::EncodedSlash),
        ("/a%5cb.php", ScriptPathError::EncodedSlash),
        ("/index.php/%0a", ScriptPathError::ControlCharacter),
        ("/index.php%00.jpg", ScriptPathError::ControlCharacter),
        ("/index.php/%0d", ScriptPathError::ControlCharacter),
        ("/a\\b.php", ScriptPathError::Backslash),
        ("/a%zz.php", ScriptPathError::BadPercentEncoding),
        ("/a%4", ScriptPathError::BadPercentEncoding),
        ("/%ff.php", ScriptPathError::NotUtf8),
        ("*", ScriptPathError::NotOriginForm),
    ];
    for (path, expected) in cases {
        let error = resolve_script(path, &settings(), |_| true).unwrap_err();
        assert_eq!(error, expected, "{path}");
        assert_eq!(error.status(), StatusCode::BAD_REQUEST, "{path}");
    }
}

#[test]
fn percent_decoding_happens_once() {
    // `%252e%252e` decodes to the literal text `%2e%2e`, which is not `..`.
    let script = resolve_script("/%252e%252e/a%20b.php", &settings(), |_| true).unwrap();
    assert_eq!(script.name, "/%2e%2e/a b.php");
    assert_eq!(script.filename, Path::new("/var/www/html/%2e%2e/a b.php"));
}

#[test]
fn directory_path_gets_the_index_appended() {
    let script = resolve_script("/blog/", &settings(), |_| true).unwrap();
    assert_eq!(script.name, "/blog/index.php");
    assert_eq!(script.document_uri, "/blog/");
    let root = resolve_script("/", &settings(), |_| true).unwrap();
    assert_eq!(root.name, "/index.php");
    assert_eq!(root.filename, Path::new("/var/www/html/index.php"));
}

#[test]
fn dot_and_empty_segments_are_normalised() {
    let script = resolve_script("//a/./b.php//x", &settings(), |_| true).unwrap();
    assert_eq!(script.name, "/a/b.php");
    assert_eq!(script.path_info.as_deref(), Some("/x"));
    assert_eq!(script.document_uri, "/a/b.php/x");
}

#[test]
fn script_filename_cannot_leave_the_root() {
    for target in [
        "/../x.php",
        "/a/../../x.php",
        "/..%2f..%2fx.php",
        "/%2e%2e/%2e%2e/x.php",
    ] {
        let result = resolve_script(target, &settings(), |_| true);
        assert!(result.is_err(), "{target} resolved to {result:?}");
    }
    let bad_index = FastCgiSettings {
        index: "../secret.php".into(),
        ..settings()
    };
    let error = resolve_script("/", &bad_index, |_| true).unwrap_err();
    assert_eq!(error, ScriptPathError::RootEscape);
    let absolute_index = FastCgiSettings {
        index: "/etc/x.php".into(),
        front_controller: true,
        ..settings()
    };
    let error = resolve_script("/about", &absolute_index, |_| true).unwrap_err();
    assert_eq!(error, ScriptPathError::RootEscape);
}

#[test]
fn try_files_refuses_a_script_that_does_not_exist() {
    let settings = FastCgiSettings {
        try_files: true,
        ..settings()
    };
    // evil.jpg exists, x.php does not: PHP's fix_pathinfo must never see this request.
    let exists = |p: &Path| p == Path::new("/var/www/html/uploads/evil.jpg");
    let error = resolve_script("/uploads/evil.jpg/x.php", &settings, exists).unwrap_err();
    assert_eq!(
        error,
        ScriptPathError::ScriptNotFound("/var/www/html/uploads/evil.jpg/x.php".into())
    );
    assert_eq!(error.status(), StatusCode::NOT_FOUND);
}

#[test]
fn path_without_php_is_404_without_front_controller() {
    let error = resolve_script("/about", &settings(), |_| true).unwrap_err();
    assert_eq!(error, ScriptPathError::NotAScript);
    assert_eq!(error.status(), StatusCode::NOT_FOUND);
}

#[test]
fn front_controller_runs_the_root_index_with_the_original_uri() {
    let settings = FastCgiSettings {
        try_files: true,
        front_controller: true,
        ..settings()
    };
    let exists = |p: &Path| p == Path::new("/var/www/html/index.php");
    let params = build_full(
        "/2024/hello-world/?p=2",
        &HeaderMap::new(),
        &settings,
        exists,
    );
    let params = params.unwrap();
    assert_eq!(get(&params, "SCRIPT_NAME").as_deref(), Some("/index.php"));
    assert_eq!(
        get(&params, "SCRIPT_FILENAME").as_deref(),
        Some("/var/www/html/index.php")
    );
    assert_eq!(
        get(&params, "REQUEST_URI").as_deref(),
        Some("/2024/hello-world/?p=2")
    );
    assert_eq!(get(&params, "QUERY_STRING").as_deref(), Some("p=2"));
    assert_eq!(get(&params, "PATH_INFO"), None);
    let missing_php = resolve_script("/old.php", &settings, exists).unwrap();
    assert_eq!(missing_php.name, "/index.php");
    let no_php = resolve_script("/about", &settings, exists).unwrap();
    assert_eq!(no_php.filename, Path::new("/var/www/html/index.php"));
}

#[test]
fn front_controller_without_an_index_file_is_404() {
    let settings = FastCgiSettings {
        try_files: true,
        front_controller: true,
        ..settings()
    };
    let error = resolve_script("/about", &settings, |_| false).unwrap_err();
    assert!(matches!(error, ScriptPathError::ScriptNotFound(_)));
}

#[test]
fn extra_params_come_last() {
    let settings = FastCgiSettings {
        params: vec![("APP_ENV".into(), "prod".into())],
        ..settings()
    };
    let params = build_full("/index.php", &HeaderMap::new(), &settings, |_| true).unwrap();
    assert_eq!(names(&params).last().map(String::as_str), Some("APP_ENV"));
    assert_eq!(get(&params, "APP_ENV").as_deref(), Some("prod"));
}

#[test]
fn script_exists_is_true_only_for_files() {
    let dir = std::env::temp_dir();
    assert!(!params::script_exists(&dir), "a directory is not a script");
    let file = dir.join(format!("causeway-script-exists-{}.php", std::process::id()));
    std::fs::write(&file, b"<?php").unwrap();
    assert!(params::script_exists(&file));
    std::fs::remove_file(&file).unwrap();
    assert!(!params::script_exists(&file));
}

#[test]
fn addresses_ports_and_lengths_are_written_as_display_writes_them() {
    let authority = Authority::from_static("example.com");
    let headers = HeaderMap::new();
    let cases: [(&str, &str, Option<u64>); 4] = [
        ("0.0.0.0:0", "255.255.255.255:65535", Some(0)),
        ("10.20.30.40:8080", "127.0.0.1:80", Some(u64::MAX)),
        ("[::1]:443", "[2001:db8::7]:8443", None),
        ("[::ffff:192.0.2.1]:1", "1.2.3.4:9", Some(1234567890)),
    ];
    for (client, server, length) in cases {
        let client: std::net::SocketAddr = client.parse().expect("client address");
        let server: std::net::SocketAddr = server.parse().expect("server address");
        let meta = RequestMeta {
            client: Some(client),
            server: Some(server),
            content_length: length,
            ..plain_get(&headers, &authority)
        };
        let params = build_with(&meta, &settings(), |_| true).expect("params");
        let expected = [
            ("REMOTE_ADDR", client.ip().to_string()),
            ("REMOTE_PORT", client.port().to_string()),
            ("SERVER_ADDR", server.ip().to_string()),
            ("SERVER_PORT", server.port().to_string()),
            (
                "CONTENT_LENGTH",
                length.map(|n| n.to_string()).unwrap_or_default(),
            ),
        ];
        for (name, value) in expected {
            assert_eq!(
                get(&params, name),
                Some(value),
                "{name} for {client} {server}"
            );
        }
        let mut encoded = bytes::BytesMut::new();
        let pairs = params.encoded().expect("encodable");
        crate::fastcgi::record::encoded_params(&mut encoded, 1, pairs);
        let mut from_pairs = bytes::BytesMut::new();
        crate::fastcgi::record::params(&mut from_pairs, 1, params.iter()).expect("encodes");
        assert_eq!(encoded, from_pairs, "the same records either way");
        assert!(
            encoded.len() <= params.encoded_len_max(),
            "{} > {}",
            encoded.len(),
            params.encoded_len_max()
        );
    }
}

#[test]
fn params_are_kept_in_the_encoding_they_are_sent_in() {
    let mut params = Params::default();
    params.push("SHORT", "v");
    params.push("EMPTY", "");
    params.push("VALUE_127", "x".repeat(127));
    // From 128 bytes a length takes four bytes: the value's is widened after it is written.
    params.push("VALUE_128", "y".repeat(128));
    params.push("N".repeat(200).as_str(), "z");
    params.push("AFTER", "w");
    let mut expected = bytes::BytesMut::new();
    for (name, value) in params.iter() {
        crate::fastcgi::record::put_pair(&mut expected, name, value).expect("pair");
    }
    assert_eq!(params.encoded().expect("encodable"), &expected[..]);
    assert_eq!(get(&params, "VALUE_128"), Some("y".repeat(128)));
    assert_eq!(get(&params, &"N".repeat(200)), Some("z".to_string()));
    assert_eq!(get(&params, "AFTER"), Some("w".to_string()));
    assert_eq!(names(&params).len(), 6);

    // Built values and HTTP_* fields are written in place too: a long PATH_TRANSLATED, a
    // long field, a field joined from two.
    let long_path = format!("/index.php/{}", "p".repeat(300));
    let mut headers = HeaderMap::new();
    headers.append(
        "x-long",
        HeaderValue::from_str(&"h".repeat(150)).expect("value"),
    );
    headers.append("cookie", HeaderValue::from_static("a=1"));
    headers.append("cookie", HeaderValue::from_static("b=2"));
    let built = build_for(&long_path, &headers).expect("params");
    let mut expected = bytes::BytesMut::new();
    for (name, value) in built.iter() {
        crate::fastcgi::record::put_pair(&mut expected, name, value).expect("pair");
    }
    assert_eq!(built.encoded().expect("encodable"), &expected[..]);
    assert!(get(&built, "PATH_TRANSLATED").is_some_and(|p| p.len() > 300));
    assert_eq!(get(&built, "HTTP_X_LONG"), Some("h".repeat(150)));
    assert_eq!(get(&built, "HTTP_COOKIE").as_deref(), Some("a=1; b=2"));
}
