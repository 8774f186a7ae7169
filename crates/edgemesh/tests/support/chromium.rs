//! Headless Chromium (Debian's `chromium`) inside a test's namespace: the
//! DOM a page shows once its scripts have run ([`dom`]), its screenshot
//! ([`screenshot`], checked with [`Png`]), and the elements of a DOM that
//! carry an attribute ([`elements_with`]); or a page kept open, in real
//! time, to watch it while the test changes the world ([`Browser`]). Each
//! run has a fresh profile and is bounded in time.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use super::netns::Netns;

const CHROMIUM: &str = "/usr/bin/chromium";
/// Bound on one browser run (its virtual time budget is much shorter).
const RUN_LIMIT: Duration = Duration::from_secs(90);

/// Runs Chromium headless in `ns` on `url` with `extra` flags; `budget`
/// is the page's virtual time (timers run, the network is real).
fn run(ns: &Netns, url: &str, budget: Duration, extra: &[&str]) -> Output {
    let profile = tempfile::tempdir().unwrap();
    let out = ns
        .cmd("timeout")
        .arg(RUN_LIMIT.as_secs().to_string())
        .arg(CHROMIUM)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"])
        .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={}", budget.as_millis()))
        .args(extra)
        .arg(url)
        .output()
        .expect("chromium is installed (apt-get install chromium)");
    assert!(out.status.success(), "chromium on {url}: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    out
}

/// The DOM of `url` after `budget` of the page's time, serialised.
pub fn dom(ns: &Netns, url: &str, budget: Duration) -> String {
    String::from_utf8(run(ns, url, budget, &["--dump-dom"]).stdout).expect("the DOM is UTF-8")
}

/// Saves a screenshot of `url` (1200x800, after `budget`) as `path`.
pub fn screenshot(ns: &Netns, url: &str, budget: Duration, path: &Path) {
    let _ = std::fs::remove_file(path);
    run(ns, url, budget, &["--window-size=1200,800", &format!("--screenshot={}", path.display())]);
}

/// A page open in Chromium, driven over the DevTools protocol on a pipe
/// (`--remote-debugging-pipe`: commands on the browser's fd 3, answers on
/// its fd 4, each a JSON message ended by a NUL byte; here two FIFOs).
pub struct Browser {
    child: Child,
    commands: File,
    answers: BufReader<File>,
    /// The page's DevTools session.
    session: String,
    next_id: u64,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Browser {
    /// Opens `url` in a new Chromium in `ns` (the page then runs in real time).
    pub fn open(ns: &Netns, url: &str) -> Browser {
        let (profile, fifos) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (to, from) = (fifos.path().join("commands"), fifos.path().join("answers"));
        for fifo in [&to, &from] {
            super::netns::ok(&["mkfifo", fifo.to_str().unwrap()]);
        }
        let script = format!(
            "exec timeout {} {CHROMIUM} --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
             --disable-background-networking --disable-component-update --disable-sync --window-size=1200,800 \
             --user-data-dir='{}' --remote-debugging-pipe about:blank 3<'{}' 4>'{}'",
            RUN_LIMIT.as_secs(),
            profile.path().display(),
            to.display(),
            from.display()
        );
        let child = ns.cmd("sh").args(["-c", &script]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        // The shell opens the FIFOs in this order; opening blocks until both ends are open.
        let opened = std::thread::spawn(move || {
            let commands = File::options().write(true).open(&to).unwrap();
            (commands, File::open(&from).unwrap())
        });
        super::eventually(RUN_LIMIT, "chromium to open its DevTools pipe", || opened.is_finished().then_some(()));
        let (commands, answers) = opened.join().unwrap();
        let mut browser = Browser {
            child,
            commands,
            answers: BufReader::new(answers),
            session: String::new(),
            next_id: 0,
            _dirs: (profile, fifos),
        };
        let target = browser.call("Target.createTarget", json!({ "url": url }))["targetId"].clone();
        let attached = browser.call("Target.attachToTarget", json!({ "targetId": target, "flatten": true }));
        browser.session = attached["sessionId"].as_str().expect("a session ID").to_owned();
        browser
    }

    /// The value of JavaScript `expression` in the page (JSON-serialisable).
    pub fn eval(&mut self, expression: &str) -> Value {
        let reply = self.call("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true }));
        if let Some(thrown) = reply.get("exceptionDetails") {
            panic!("{expression}: {thrown}");
        }
        reply["result"]["value"].clone()
    }

    /// Saves what the page shows now as a PNG at `path`.
    pub fn screenshot(&mut self, path: &Path) {
        use base64::Engine;
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// Sends a command (to the page's session once there is one) and
    /// returns its result, skipping events.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let mut message = json!({ "id": self.next_id, "method": method, "params": params });
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.commands.write_all(&bytes).unwrap_or_else(|e| panic!("chromium's DevTools pipe: {e}"));
        loop {
            let mut answer = Vec::new();
            self.answers.read_until(0, &mut answer).unwrap();
            assert_eq!(answer.pop(), Some(0), "chromium closed its DevTools pipe (it ends after {RUN_LIMIT:?})");
            let answer: Value = serde_json::from_slice(&answer).unwrap();
            if answer["id"] == self.next_id {
                assert!(answer.get("error").is_none(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    }
}

impl Drop for Browser {
    /// Closes the browser (`timeout` then exits with it), or kills it.
    fn drop(&mut self) {
        let _ = self.commands.write_all(b"{\"id\":0,\"method\":\"Browser.close\"}\0");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where a test keeps what it made for people to look at:
/// `<target dir>/test-artifacts/` (beside `debug/`, wherever
/// `CARGO_TARGET_DIR` puts it).
pub fn artifacts_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // <target>/debug/deps/<test binary>
    let target = exe.ancestors().nth(3).expect("the test binary is under <target>/<profile>/deps");
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A start tag of a serialised DOM.
#[derive(Debug)]
pub struct Element {
    pub tag: String,
    /// Values unescaped for `&quot;`, `&lt;`, `&gt;`, `&amp;`.
    pub attrs: HashMap<String, String>,
}

impl Element {
    /// Attribute `name`, or "" when it has none.
    pub fn attr(&self, name: &str) -> &str {
        self.attrs.get(name).map_or("", String::as_str)
    }
}

/// The start tags in `dom` that carry attribute `attr`.
pub fn elements_with(dom: &str, attr: &str) -> Vec<Element> {
    let needle = format!(" {attr}=\"");
    dom.split('<')
        .filter_map(|tag| tag.split_once('>').map(|(inside, _)| inside))
        .filter(|inside| inside.contains(&needle))
        .map(element)
        .collect()
}

fn element(inside: &str) -> Element {
    let (tag, mut rest) = inside.split_once(' ').unwrap_or((inside, ""));
    let mut attrs = HashMap::new();
    while let Some((name, after)) = rest.split_once("=\"") {
        let Some((value, tail)) = after.split_once('"') else { break };
        let value = value.replace("&quot;", "\"").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&");
        attrs.insert(name.trim().to_owned(), value);
        rest = tail;
    }
    Element { tag: tag.to_owned(), attrs }
}

/// An 8-bit RGB or RGBA PNG, decoded (what Chromium's screenshots are).
pub struct Png {
    pub width: usize,
    pub height: usize,
    /// Bytes per pixel: 3 or 4.
    channels: usize,
    pixels: Vec<u8>,
}

impl Png {
    pub fn read(path: &Path) -> Png {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(data.starts_with(b"\x89PNG\r\n\x1a\n"), "{} is no PNG", path.display());
        let (mut header, mut compressed) = (None, Vec::new());
        let mut at = 8;
        while at + 12 <= data.len() {
            let len = u32::from_be_bytes(data[at..at + 4].try_into().unwrap()) as usize;
            let (kind, body) = (&data[at + 4..at + 8], &data[at + 8..at + 8 + len]);
            match kind {
                b"IHDR" => header = Some(body.to_vec()),
                b"IDAT" => compressed.extend_from_slice(body),
                _ => {}
            }
            at += 12 + len;
        }
        let header = header.expect("an IHDR chunk");
        let width = u32::from_be_bytes(header[0..4].try_into().unwrap()) as usize;
        let height = u32::from_be_bytes(header[4..8].try_into().unwrap()) as usize;
        let channels = match (header[8], header[9], header[12]) {
            (8, 2, 0) => 3,
            (8, 6, 0) => 4,
            other => panic!("unexpected PNG format (depth, colour type, interlace) {other:?}"),
        };
        let raw = miniz_oxide::inflate::decompress_to_vec_zlib(&compressed).expect("the image data inflates");
        let pixels = unfilter(&raw, width * channels, height, channels);
        Png { width, height, channels, pixels }
    }

    /// How many pixels differ from the most common colour (the background).
    pub fn pixels_off_background(&self) -> usize {
        let mut counts: HashMap<&[u8], usize> = HashMap::new();
        for px in self.pixels.chunks(self.channels) {
            *counts.entry(px).or_default() += 1;
        }
        let background = counts.values().max().copied().unwrap_or(0);
        self.width * self.height - background
    }

    /// How many distinct colours it has.
    pub fn colours(&self) -> usize {
        self.pixels.chunks(self.channels).collect::<std::collections::HashSet<_>>().len()
    }
}

/// Undoes PNG's per-row filters (none, sub, up, average, Paeth).
fn unfilter(raw: &[u8], stride: usize, height: usize, bpp: usize) -> Vec<u8> {
    assert_eq!(raw.len(), (stride + 1) * height, "inflated image size");
    let mut out = vec![0u8; stride * height];
    for y in 0..height {
        let filter = raw[y * (stride + 1)];
        let line = &raw[y * (stride + 1) + 1..(y + 1) * (stride + 1)];
        for x in 0..stride {
            let a = if x >= bpp { out[y * stride + x - bpp] } else { 0 };
            let b = if y > 0 { out[(y - 1) * stride + x] } else { 0 };
            let c = if x >= bpp && y > 0 { out[(y - 1) * stride + x - bpp] } else { 0 };
            let predicted = match filter {
                0 => 0,
                1 => a,
                2 => b,
                3 => u8::try_from((u16::from(a) + u16::from(b)) / 2).expect("the mean of two bytes"),
                4 => paeth(a, b, c),
                f => panic!("unknown PNG filter {f}"),
            };
            out[y * stride + x] = line[x].wrapping_add(predicted);
        }
    }
    out
}

fn paeth(a: u8, b: u8, c: u8) -> u8 {
    let p = a as i16 + b as i16 - c as i16;
    let (pa, pb, pc) = ((p - a as i16).abs(), (p - b as i16).abs(), (p - c as i16).abs());
    if pa <= pb && pa <= pc {
        a
    } else if pb <= pc {
        b
    } else {
        c
    }
}
