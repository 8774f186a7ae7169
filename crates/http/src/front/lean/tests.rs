use super::*;

fn parsed(head: &[u8]) -> Option<(Parsed, Vec<(Span, Span)>)> {
    let mut spans = Vec::new();
    match parse(head, 100, &mut spans) {
        Parse::Lean(p) => Some((p, spans)),
        _ => None,
    }
}

#[test]
fn a_get_is_lean_and_keeps_its_headers_in_order() {
    let raw = b"GET /a?b=1 HTTP/1.1\r\nHost: web\r\nX-One: 1\r\nx-one: 2\r\nTE: trailers\r\n\r\nGET /next";
    let (p, spans) = parsed(raw).expect("lean");
    assert_eq!(p.len, raw.len() - b"GET /next".len());
    assert!(!p.close && p.trailers);
    let head = Bytes::copy_from_slice(&raw[..p.len]);
    let req = request(&head, &p, &spans).expect("valid");
    assert_eq!((req.method(), req.uri().to_string().as_str()), (&Method::GET, "/a?b=1"));
    assert_eq!(req.headers()["host"], "web");
    let ones: Vec<_> = req.headers().get_all("x-one").iter().collect();
    assert_eq!(ones, ["1", "2"]);
}

#[test]
fn requests_with_a_body_upgrades_and_old_versions_go_to_hyper() {
    for raw in [
        &b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"[..],
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET /chat HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n",
        b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"CONNECT web:80 HTTP/1.1\r\n\r\n",
        b"GET http://web/ HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
    ] {
        let mut spans = Vec::new();
        assert!(matches!(parse(raw, 100, &mut spans), Parse::Other), "{}", String::from_utf8_lossy(raw));
    }
    let mut spans = Vec::new();
    assert!(matches!(parse(b"GET / HTTP/1.1\r\nHost: w", 100, &mut spans), Parse::Partial));
    assert!(
        parsed(b"DELETE /x HTTP/1.1\r\nContent-Length: 0\r\nConnection: keep-alive, close\r\n\r\n").unwrap().0.close
    );
}

#[test]
fn more_headers_than_allowed_go_to_hyper_which_answers_them() {
    let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..5 {
        raw.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    let mut spans = Vec::new();
    assert!(matches!(parse(&raw, 4, &mut spans), Parse::Other));
    assert!(matches!(parse(&raw, 5, &mut spans), Parse::Lean(_)));
}

#[test]
fn chunk_sizes_are_hex() {
    let mut out = Vec::new();
    for n in [0, 1, 15, 16, 255, 0x1234_5678] {
        write_chunk_size(&mut out, n);
    }
    assert_eq!(out, b"0\r\n1\r\nf\r\n10\r\nff\r\n12345678\r\n");
}

#[test]
fn the_head_has_a_date_its_framing_and_close_when_closing() {
    let mut headers = HeaderMap::new();
    headers.insert("x-a", HeaderValue::from_static("1"));
    let head = |headers: &HeaderMap, bodyless, exact, close| {
        let mut out = Vec::new();
        let framing = encode_head(&mut out, StatusCode::OK, headers, bodyless, exact, close);
        (String::from_utf8(out).unwrap(), framing)
    };
    let (text, framing) = head(&headers, false, Some(5), true);
    assert!(framing == Framing::Length(5));
    assert!(text.starts_with("HTTP/1.1 200 OK\r\nx-a: 1\r\ndate: "), "{text}");
    assert!(text.ends_with("content-length: 5\r\nconnection: close\r\n\r\n"), "{text}");
    let (text, framing) = head(&headers, false, None, false);
    assert!(framing == Framing::Chunked && text.ends_with("transfer-encoding: chunked\r\n\r\n"), "{text}");
    // The response's own length frames it; a second one, or one that is no
    // number, is left out.
    headers.append("content-length", HeaderValue::from_static("7"));
    headers.append("content-length", HeaderValue::from_static("9"));
    headers.insert("date", HeaderValue::from_static("Mon, 07 Dec 2026 23:00:00 GMT"));
    let (text, framing) = head(&headers, false, Some(5), false);
    assert!(framing == Framing::Length(7), "{text}");
    assert_eq!(text.matches("content-length").count(), 1, "{text}");
    assert_eq!(text.matches("date: ").count(), 1, "{text}");
    headers.insert("content-length", HeaderValue::from_static("x"));
    let (text, framing) = head(&headers, false, None, false);
    assert!(framing == Framing::Chunked && !text.contains("content-length"), "{text}");
    // HEAD: its length passes, nothing frames a body.
    headers.insert("content-length", HeaderValue::from_static("1234"));
    let (text, framing) = head(&headers, true, Some(0), false);
    assert!(framing == Framing::None && text.contains("content-length: 1234\r\n"), "{text}");
    let mut out = Vec::new();
    encode_head(&mut out, StatusCode::BAD_GATEWAY, &HeaderMap::new(), false, None, false);
    assert!(String::from_utf8(out).unwrap().starts_with("HTTP/1.1 502 Bad Gateway\r\n"));
}
